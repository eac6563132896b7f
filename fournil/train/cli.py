"""`fournil train …`: pretrain on packed shards, resume, plot a run."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from fournil.artifacts import claim_output
from fournil.console import UsageError, print_json

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  fournil train croissant-10m --shards out/shards --out out/run
  fournil train croissant-10m --shards out/shards --out out/run --resume        (continue after a crash)
  fournil train croissant-1m --shards out/shards --out out/smoke --set train.steps=50 --set train.lr=1e-3
  fournil train croissant-10m --shards out/shards-fr --out out/cpt --init-from out/base-model
  fournil train sft demo --tokenizer out/tok --init-from out/run/model --out out/chat \
      --chat chat.jsonl --pairs fournil/corpus/sample/parallel.jsonl.gz \
      --replay-from out/shards --set sft.replay=0.3     (loss on answers; 30 % pretraining text keeps the LM)
  fournil train plot out/run                                                    (loss/throughput PNGs)
  fournil train export out/run out/model-step200 --step 200 --dtype bfloat16     (any checkpoint → HF dir)
"""


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from fournil.cli import NON_NEGATIVE, POSITIVE, Stage

    stage = Stage(subparsers, common, "train", epilog=EPILOG, default="pretrain",
                  help="pretraining with exact resume; plots of a run",
                  description="Train a model on packed shards. `fournil train RECIPE …` is short for "
                  "`fournil train pretrain RECIPE …`.")
    pretrain = stage.verb("pretrain", cmd_pretrain)
    pretrain.add_argument("recipe", help="recipe file or preset name")
    pretrain.add_argument("--shards", type=Path, required=True, help="shards directory (from the corpus stage)")
    pretrain.add_argument("--out", type=Path, required=True, help="run directory: checkpoints, metrics, model")
    pretrain.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    pretrain.add_argument("--init-from", help="start from this HF Llama directory (continued pretraining)")
    pretrain.add_argument("--max-steps", type=POSITIVE, help="stop after this step (the schedule keeps its length)")
    pretrain.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override a recipe value, e.g. train.lr=1e-3 (repeatable; YAML syntax for values)")

    sft = stage.verb("sft", cmd_sft)
    sft.add_argument("recipe", help="recipe file or preset name (needs an `sft` section)")
    sft.add_argument("--tokenizer", type=Path, required=True, help="tokenizer directory of the model")
    sft.add_argument("--init-from", required=True, help="model directory to fine-tune")
    sft.add_argument("--out", type=Path, required=True, help="run directory")
    sft.add_argument("--chat", type=Path, nargs="*", default=[], help="jsonl files of {messages: [...]}")
    sft.add_argument("--pairs", type=Path, nargs="*", default=[], help="jsonl(.gz) files of {en, fr} pairs")
    sft.add_argument("--replay-from", type=Path, help="pretraining shards mixed in at the recipe's sft.replay share")
    sft.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    sft.add_argument("--max-steps", type=POSITIVE, help="stop after this step (the schedule keeps its length)")
    sft.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")

    plot = stage.verb("plot", cmd_plot)
    plot.add_argument("run", type=Path, help="run directory")

    export = stage.verb("export", cmd_export, dtype="cast floating weights", force=True)
    export.add_argument("run", type=Path, help="run directory")
    export.add_argument("out", type=Path, help="output model directory")
    export.add_argument("--step", type=NON_NEGATIVE, help="checkpoint step (default: the newest complete one)")


def claim_run(args: argparse.Namespace, *inputs) -> None:
    """The run directory must be new, empty or a run of this verb (`--resume`); under torchrun only rank 0 looks,
    since the others would see the files rank 0 has started to write."""
    if os.environ.get("RANK", "0") == "0":
        claim_output(args.out, f"fournil.train.{args.action}", resume=args.resume,
                     inputs=[*inputs, Path(args.recipe) if Path(args.recipe).is_file() else None],
                     signature=("recipe.json", "metrics.jsonl", "checkpoints"))


def parse_overrides(pairs: list[str]) -> dict:
    import yaml

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {pair!r}: expected KEY=VALUE, e.g. train.lr=1e-3")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def cmd_pretrain(args: argparse.Namespace) -> None:
    """pretrain (the default action)

    Pretrain the recipe's model on packed shards with AdamW, gradient accumulation to train.batch_tokens,
    warmup + cosine/WSD schedule, per-language validation in bits per byte, and atomic checkpoints.
    --resume continues bit for bit from the newest complete checkpoint."""
    from fournil.recipe import load_recipe
    from fournil.train.loop import train

    recipe = load_recipe(args.recipe, overrides=parse_overrides(args.set))
    claim_run(args, args.shards, args.init_from)
    summary = train(recipe, args.shards, args.out, resume=args.resume, init_from=args.init_from,
                    max_steps=args.max_steps)
    result = {"run": str(summary.run_dir), "steps": summary.steps, "loss": summary.final_loss,
              "validation_bpb": summary.validation_bpb, "tokens_per_s": summary.tokens_per_second}
    if args.json:
        print_json(result)
    else:
        log.info("done: %s", result)


def cmd_sft(args: argparse.Namespace) -> None:
    """supervised fine-tuning on chat data and translation pairs

    Fine-tune a model with the recipe's `sft` section on ChatML conversations (jsonl with `messages`) and
    EN-FR pairs (jsonl with `en`, `fr`; rows with split=test are left out) turned into translation
    instructions in both directions. Loss on assistant answers only; same checkpoints and exact resume as
    pretraining; the final model directory carries the tokenizer and chat template."""
    from fournil.recipe import load_recipe
    from fournil.train.sft import finetune

    recipe = load_recipe(args.recipe, overrides=parse_overrides(args.set))
    claim_run(args, args.tokenizer, args.init_from, *args.chat, *args.pairs, args.replay_from)
    summary = finetune(recipe, args.tokenizer, args.init_from, args.out, chat=args.chat, pairs=args.pairs,
                       resume=args.resume, max_steps=args.max_steps, replay_from=args.replay_from)
    result = {"run": str(summary.run_dir), "steps": summary.steps, "loss": summary.final_loss,
              "validation": summary.validation}
    if args.json:
        print_json(result)
    else:
        log.info("done: %s", result)


def cmd_plot(args: argparse.Namespace) -> None:
    """loss, learning-rate, throughput and validation PNGs of a run

    Read RUN/metrics.jsonl and write RUN/plots/{loss,throughput}.png."""
    from fournil.train.plot import plot_run

    for path in plot_run(args.run):
        print(path)


def cmd_export(args: argparse.Namespace) -> None:
    """a checkpoint of a run as a Hugging Face model directory

    Copy a checkpoint's model (the newest, or --step N) to a transformers directory, optionally cast;
    works while the run is still training."""
    from fournil.lm.hf import convert
    from fournil.train import checkpoint

    claim_output(args.out, "fournil.model", inputs=[args.run], force=args.force, option="OUT")
    found = checkpoint.checkpoint_dirs(args.run)
    if args.step is not None:
        found = [p for p in found if p.name == f"step-{args.step:06d}"]
    if not found:
        available = ", ".join(p.name for p in checkpoint.checkpoint_dirs(args.run)) or "none"
        raise UsageError(f"{args.run}: no complete checkpoint" + (f" for step {args.step}" if args.step else "")
                         + f" (available: {available})")
    convert(found[-1] / "model", args.out, dtype=args.dtype)
    log.info("wrote %s from %s", args.out, found[-1])
