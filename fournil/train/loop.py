"""The pretraining loop: AdamW, gradient accumulation to a global batch in tokens, clipping, schedules,
per-language validation in bits per byte, atomic checkpoints and exact resume.

One function, `train()`, in the nanoGPT spirit: read it top to bottom to know what a step does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fournil import artifacts
from fournil.console import FournilError, UsageError, progress_bar
from fournil.corpus.shards import Shards
from fournil.lm.info import flops_per_token
from fournil.lm.llama import Llama
from fournil.lm.score import bits_per_byte, window_nats
from fournil.recipe import Recipe, to_dict
from fournil.train import checkpoint, device, parallel
from fournil.train.config import TrainConfig
from fournil.train.data import Loader, ShardSamples
from fournil.train.schedule import lr_at

log = logging.getLogger(__name__)
METRICS = "metrics.jsonl"


@dataclass
class Summary:
    run_dir: Path
    steps: int
    final_loss: float
    validation: dict[str, dict[str, float]]  # {"val_bpb": {"fr": …, "en": …}} or {"val_loss": {…}}
    tokens_per_second: float

    @property
    def validation_bpb(self) -> dict[str, float]:
        return self.validation.get("val_bpb", {})


def make_optimizer(model: torch.nn.Module, t: TrainConfig, fused: bool = True) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (projections, embeddings) only; norms' gains are not decayed.
    `fused`: one kernel per parameter group instead of a dozen elementwise passes; False: the foreach kernels."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, eps=1e-8, fused=fused)


def accumulate_gradients(model: torch.nn.Module, micro_batches: list, accumulation: int, autocast,
                         device: torch.device) -> float:
    """Forward/backward over one step's micro-batches, gradients summed as the mean over them; mean loss."""
    loss_sum = 0.0
    for inputs, targets in micro_batches:
        with autocast:
            logits = model(inputs.to(device))
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.to(device).flatten())
        (loss / accumulation).backward()
        loss_sum += loss.item()
    return loss_sum / accumulation


def clip_and_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float) -> float:
    """Clip the global gradient norm (0 = no clipping), step, clear gradients; the pre-clip norm."""
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf"))
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def continued_pretraining_recipe(recipe: Recipe, init_from: Path, shards: Shards) -> Recipe:
    """The recipe with the starting model's own architecture, after checking the shards speak its tokenizer."""
    from fournil.lm.hf import read_config, resolve

    directory = resolve(init_from)
    config = read_config(directory)
    problems = []
    if config.vocab_size != shards.vocab_size:
        problems.append(f"{directory} has a {config.vocab_size}-token vocabulary but the shards were tokenised with "
                        f"{shards.vocab_size} tokens")
    tokenizer_json = directory / "tokenizer.json"
    expected = shards.index.get("tokenizer_sha256")
    # the same file hash `fournil corpus pack` records in the shards' index
    if expected and tokenizer_json.is_file() and artifacts.sha256_file(tokenizer_json) != expected:
        problems.append(f"{tokenizer_json} is not the tokenizer the shards were made with")
    if problems:
        raise UsageError("continued pretraining needs data tokenised with the starting model's own tokenizer: "
                         + "; ".join(problems) + f". Re-pack the corpus with --tokenizer {directory}.")
    if config != recipe.model:
        log.info("continued pretraining: using %s's architecture instead of the recipe's model section", directory)
    return replace(recipe, model=config, tokenizer=replace(recipe.tokenizer, vocab_size=config.vocab_size))


def check_data(recipe: Recipe, shards: Shards) -> None:
    """Everything about the data that would fail later must fail before step 0."""
    problems = []
    if shards.vocab_size != recipe.model.vocab_size:
        problems.append(f"shards were tokenised with a {shards.vocab_size}-token vocabulary but model.vocab_size is "
                        f"{recipe.model.vocab_size} (another tokenizer?)")
    if recipe.train.seq_len > recipe.model.max_seq_len:
        problems.append(f"train.seq_len {recipe.train.seq_len} exceeds the model's context {recipe.model.max_seq_len}")
    if shards.seq_len != recipe.train.seq_len:
        problems.append(f"shards are packed for seq_len {shards.seq_len} but train.seq_len is {recipe.train.seq_len}")
    global_batch = recipe.train.batch_tokens // recipe.train.seq_len
    if len(shards) and len(shards) < global_batch:
        problems.append(f"shards hold {len(shards)} samples, fewer than one global batch ({global_batch})")
    if problems:
        raise UsageError(f"{shards.directory}: " + "; ".join(problems))


def validation_bpb(model: torch.nn.Module, shards: Shards, max_tokens: int, seq_len: int, batch_size: int,
                   device: torch.device | None = None) -> dict[str, float]:
    """Bits per byte per language: mean next-token loss (nats) × tokens per UTF-8 byte of the stream ÷ ln 2."""
    was_training = model.training
    model.eval()
    results = {}
    for language in shards.languages:
        stream, n_bytes = shards.validation(language)
        if len(stream) < 2 or n_bytes == 0:
            continue
        tokens = torch.from_numpy(stream[: max_tokens + 1].astype("int64")).to(device)
        nats, predicted = window_nats(model, tokens, seq_len, batch_size)
        results[language] = bits_per_byte(nats / predicted * len(stream), n_bytes)  # the sample's rate, whole stream
    model.train(was_training)
    return results


def train(recipe: Recipe, shards_dir: str | Path, run_dir: str | Path, resume: bool = False,
          init_from: str | Path | None = None, max_steps: int | None = None) -> Summary:
    """Pretrain `recipe.model` on `shards_dir`, writing checkpoints, metrics and a final model to `run_dir`.

    Launched by torchrun, every rank runs this function (DDP or FSDP2 per train.parallel). max_steps stops
    early (the schedule still spans recipe.train.steps) — how tests interrupt a run.
    """
    shards = Shards(shards_dir)
    if init_from is not None:
        recipe = continued_pretraining_recipe(recipe, Path(init_from), shards)
    t = recipe.train
    check_data(recipe, shards)

    def validate(model: torch.nn.Module, device: torch.device) -> dict[str, dict[str, float]]:
        return {"val_bpb": validation_bpb(model, shards, t.eval_tokens, t.seq_len, t.micro_batch_size, device)}

    files: tuple[Path, ...] = ()
    if init_from is not None:  # continued pretraining keeps the starting model's tokenizer beside the weights
        from fournil.lm.hf import resolve

        files = tokenizer_files(resolve(init_from))
    return run(recipe, t, ShardSamples(shards), validate, run_dir, resume, init_from, max_steps, model_files=files)


def tokenizer_files(directory: Path) -> tuple[Path, ...]:
    """The tokenizer files of a model or tokenizer directory, which a trained model directory should carry."""
    return tuple(sorted(p for p in Path(directory).iterdir()
                        if p.is_file() and p.name.startswith(("tokenizer", "special_tokens", "chat_template"))))


def run(recipe: Recipe, t: TrainConfig, dataset, validate, run_dir: str | Path, resume: bool = False,
        init_from: str | Path | None = None, max_steps: int | None = None,
        model_files: tuple[Path, ...] = ()) -> Summary:
    """The loop shared by pretraining and fine-tuning: `dataset` has `__len__` and `collate(indices)`;
    `validate(model, device)` returns {metric: {name: value}} for the log; `model_files` (tokenizer files, say)
    are copied into the final model directory."""
    run_dir = Path(run_dir)
    world = parallel.setup()
    global_batch = t.batch_tokens // t.seq_len
    if global_batch % (world.size * t.micro_batch_size):
        raise UsageError(f"global batch of {global_batch} sequences does not split into {world.size} ranks × "
                         f"micro_batch_size {t.micro_batch_size}; change train.batch_tokens or micro_batch_size")
    accumulation = global_batch // (world.size * t.micro_batch_size)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        artifacts.write_json(run_dir / "recipe.json", to_dict(recipe))

    torch.manual_seed(t.seed)
    last = checkpoint.latest(run_dir) if resume else None
    if init_from is not None and last is None:  # a resumed run's weights come from its checkpoint instead
        from fournil.lm.hf import load_model

        model = load_model(init_from, dtype="float32")
    else:
        model = Llama(recipe.model)
    config = model.config
    model = parallel.parallelize(model.to(world.device), world, t.parallel, t.activation_checkpointing, t.compile)
    setup = device.choose(world.device.type, t.precision, device.device_name(world.device), t.peak_flops)
    optimizer = make_optimizer(model, t, fused=setup.fused_adamw)
    loader = Loader(dataset, global_batch, t.seed, world.rank, world.size)
    start_step = 0
    if resume and last is None:
        log.info("no checkpoint in %s: starting from step 0", run_dir)
    if last is not None:
        state = checkpoint.load(last, model, optimizer)
        if state["recipe"]["model"] != to_dict(recipe.model):
            raise UsageError(f"{last}: checkpoint was made with another model config than this recipe")
        loader.load_state_dict(state["loader"])
        start_step = state["step"]
        log.info("resuming from %s (step %d, saved on %d ranks, now %d)", last, start_step,
                 state.get("world_size", 1), world.size)
    model.train()
    metrics = _Metrics(run_dir / METRICS, keep_through_step=start_step, enabled=world.is_main,
                       loggers=t.loggers, recipe=recipe)

    autocast = (torch.autocast(world.device.type, dtype=setup.autocast) if setup.autocast is not None
                else contextlib.nullcontext())
    if setup.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    flops = flops_per_token(recipe.model, t.seq_len)["training"]
    peak = setup.peak.flops * world.size if setup.peak.flops else None  # None: MFU not reported
    if world.is_main and peak:
        log.info("MFU denominator: %s, %.3g FLOP/s per device × %d (matmuls in %s)", setup.peak.source,
                 setup.peak.flops, world.size, setup.matmul_dtype)
    elif world.is_main:
        log.warning("MFU denominator: %s", setup.peak.source)
    end_step = min(t.steps, max_steps) if max_steps is not None else t.steps
    loss_value, tps, val = float("nan"), 0.0, {}
    stopped_by, saved = 0, None

    with progress_bar(transient=False) as bar, checkpoint.StopOnSignal() as stop:
        task = bar.add_task("train", total=t.steps, completed=start_step, visible=world.is_main)
        window_start, window_tokens = time.perf_counter(), 0
        for step in range(start_step, end_step):
            lr = lr_at(step, t)
            for group in optimizer.param_groups:
                group["lr"] = lr
            indices = loader.next_batch()
            micro_batches = [loader.tensors(indices[i : i + t.micro_batch_size])
                             for i in range(0, len(indices), t.micro_batch_size)]
            loss_value = parallel.all_mean(accumulate_gradients(model, micro_batches, accumulation, autocast,
                                                                world.device), world)
            step_tokens = world.size * sum(inputs.numel() for inputs, _ in micro_batches)
            if not math.isfinite(loss_value):
                good = checkpoint.latest(run_dir)
                raise FournilError(f"loss became {loss_value} at step {step + 1}; last good checkpoint: "
                                   f"{good or 'none'}. Lower train.lr or check the data, then --resume.")
            grad_norm = clip_and_step(model, optimizer, t.grad_clip)
            done = step + 1
            # one rank's signal stops every rank after this same step, so the checkpoint below is consistent
            stopped_by = parallel.all_max(stop.signum, world) if done < end_step else 0
            window_tokens += step_tokens
            bar.update(task, completed=done, description=f"train loss {loss_value:.3f}")

            if done % t.log_interval == 0 or done == end_step:
                elapsed = time.perf_counter() - window_start
                tps = window_tokens / elapsed
                record = {"step": done, "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                          "tokens": done * t.batch_tokens, "tokens_per_s": tps,
                          "mfu": tps * flops / peak if peak else None, "peak_flops": peak,
                          "peak_source": setup.peak.source,
                          "eta_s": (t.steps - done) * t.batch_tokens / tps, "epoch": loader.epoch}
                metrics.write(record)
                if world.is_main:
                    log.info("step %d  loss %.4f  lr %.2e  grad %.2f  %.0f tok/s  MFU %s", done, loss_value, lr,
                             grad_norm, tps, f"{100 * record['mfu']:.1f}%" if peak else "n/a")
                window_start, window_tokens = time.perf_counter(), 0
            pause = time.perf_counter()
            if (t.eval_interval and done % t.eval_interval == 0) or done == end_step:
                val = {metric: values for metric, values in validate(model, world.device).items() if values}
                if val:
                    metrics.write({"step": done, **val})
                    for metric, values in val.items():
                        if world.is_main:
                            log.info("step %d  %s: %s", done, metric,
                                     "  ".join(f"{k} {v:.3f}" for k, v in sorted(values.items())))
            if (t.checkpoint_interval and done % t.checkpoint_interval == 0) or done == end_step or stopped_by:
                saved = checkpoint.save(run_dir, done, model, config, optimizer,
                                        {"loader": loader.state_dict(), "recipe": to_dict(recipe)},
                                        t.keep_checkpoints, world)
            window_start += time.perf_counter() - pause  # throughput counts training time only
            if stopped_by:
                break

    if stopped_by:
        parallel.teardown(world)
        raise checkpoint.Stopped(stopped_by, done, saved)

    if end_step == t.steps and world.is_main:
        final = checkpoint.latest(run_dir)
        export = run_dir / ".tmp-model"
        shutil.rmtree(export, ignore_errors=True)
        shutil.copytree(final / "model", export)
        for path in model_files:
            shutil.copy2(path, export / Path(path).name)
        artifacts.write_manifest(export, producer="fournil.train", recipe=recipe.name, steps=t.steps,
                                 from_checkpoint=str(final))
        shutil.rmtree(run_dir / "model", ignore_errors=True)
        os.rename(export, run_dir / "model")
    parallel.barrier(world)
    parallel.teardown(world)
    return Summary(run_dir, end_step, loss_value, val, tps)


class _Metrics:
    """metrics.jsonl, one JSON object per line; on resume, lines after the checkpoint's step are dropped so the
    file describes exactly the run that produced the weights. Optionally mirrored to TensorBoard / W&B."""

    def __init__(self, path: Path, keep_through_step: int, enabled: bool = True, loggers: tuple[str, ...] = (),
                 recipe: Recipe | None = None):
        self.path, self.enabled, self._sinks = path, enabled, []
        if not enabled:  # ranks other than 0 log nothing
            return
        kept = []
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(json.JSONDecodeError):  # a line cut by a kill
                    if json.loads(line)["step"] <= keep_through_step:
                        kept.append(line)
        artifacts.write_text(path, "".join(line + "\n" for line in kept))
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (lives as long as the run)
        for name in loggers:
            self._sinks.append(_open_sink(name, path.parent, recipe))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        flat = {f"val_bpb/{k}": v for k, v in record.get("val_bpb", {}).items()}
        flat.update({f"train/{k}": v for k, v in record.items()
                     if k not in ("step", "val_bpb") and isinstance(v, int | float)})  # scalars only (no source text)
        for sink in self._sinks:
            sink(flat, record["step"])


def _open_sink(name: str, run_dir: Path, recipe: Recipe | None):
    """A function (scalars, step) → None writing to TensorBoard or Weights & Biases; clear error if missing."""
    try:
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

            def tensorboard(scalars: dict[str, float], step: int) -> None:
                for key, value in scalars.items():
                    writer.add_scalar(key, value, step)
                writer.flush()

            return tensorboard
        import wandb

        wandb_run = wandb.init(project="fournil", dir=str(run_dir), config=to_dict(recipe) if recipe else None,
                               resume="allow")
        return lambda scalars, step: wandb_run.log(scalars, step=step)
    except ImportError as exc:
        raise UsageError(f"train.loggers asks for {name}, which is not installed ({exc.name}): "
                         f"pip install {name}, or remove it from the recipe") from exc
