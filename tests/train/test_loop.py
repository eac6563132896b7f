"""The training loop: pinned losses, bit-exact resume after SIGKILL, early and clear failures."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fournil.cli import main
from fournil.console import FournilError, UsageError
from fournil.recipe import load_recipe
from fournil.train import checkpoint
from fournil.train.loop import train
from tests.train.conftest import TINY, write_shards

# First 12 losses of croissant-1m on the synthetic shards (seed 0, float32, CPU). Any change to the model,
# loss, optimizer, schedule or data order moves them by far more than the tolerance (2e-3, which absorbs
# CPU-kernel differences between machines).
GOLDEN = [7.637004, 7.44701, 6.385484, 5.590265, 4.884607, 4.630625,
          4.668302, 4.643034, 4.810672, 4.655455, 4.444519, 4.378759]


def losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if '"loss"' in line]


def test_golden_loss_curve_and_outputs(tiny_recipe, shards_dir, tmp_path):
    summary = train(tiny_recipe, shards_dir, tmp_path)
    assert losses(tmp_path) == pytest.approx(GOLDEN, abs=2e-3)
    assert set(summary.validation_bpb) == {"fr", "en"} and all(0 < v < 3 for v in summary.validation_bpb.values())
    assert [p.name for p in checkpoint.checkpoint_dirs(tmp_path)] == ["step-000009", "step-000012"]  # keep 2
    from fournil.model.parity import compare_with_transformers

    assert compare_with_transformers(tmp_path / "model")["max_abs_diff"] < 1e-5  # the exported model is HF


RUNNER = """
import sys, torch
torch.set_num_threads(1)
from fournil.recipe import load_recipe
from fournil.train.loop import train
overrides = {overrides!r}
train(load_recipe("croissant-1m", overrides=overrides), sys.argv[1], sys.argv[2], resume=True)
"""


def run_child(shards: Path, run_dir: Path, kill_after_step: int | None) -> int:
    script = RUNNER.format(overrides=TINY)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    child = subprocess.Popen([sys.executable, "-c", script, str(shards), str(run_dir)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if kill_after_step is None:
        assert child.wait(timeout=300) == 0, child.stderr.read().decode()[-2000:]
        return 0
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and child.poll() is None:
        if metrics.exists() and any(json.loads(line).get("step", 0) >= kill_after_step
                                    for line in metrics.read_text().splitlines() if line.endswith("}")):
            break
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    return child.returncode


@pytest.mark.slow
def test_sigkill_then_resume_is_bitwise_identical(shards_dir, tmp_path, random_seed):
    """Kill the run at random steps (real SIGKILL, real processes), resume each time: same weights, bit for bit."""
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    run_child(shards_dir, reference, None)
    rng = random.Random(random_seed)
    kills = sorted(rng.sample(range(1, 12), 3))
    for step in kills:
        run_child(shards_dir, interrupted, step)
    run_child(shards_dir, interrupted, None)
    a = load_file(reference / "model" / "model.safetensors")
    b = load_file(interrupted / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"kills at {kills}"
    assert losses(interrupted) == losses(reference)  # the log was rewound to the checkpoint, then re-grown


def cli_child(shards: Path, run_dir: Path) -> subprocess.Popen:
    """`fournil train … --resume` in a child process with one thread (as RUNNER), stderr in RUN.err."""
    sets = [f"--set={k}={v}" for k, v in TINY.items()]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1", "COLUMNS": "500"}
    stderr = open(run_dir.parent / f"{run_dir.name}.err", "w")  # noqa: SIM115 (the child holds it)
    return subprocess.Popen([sys.executable, "-m", "fournil", "train", "croissant-1m", "--shards", str(shards),
                             "--out", str(run_dir), "--resume", *sets], env=env, stdout=subprocess.DEVNULL,
                            stderr=stderr)


def stop_with(sig: signal.Signals, shards: Path, run_dir: Path, after_step: int) -> int:
    """Run until RUN/metrics.jsonl shows `after_step`, send `sig`; the step the run stopped after."""
    child = cli_child(shards, run_dir)
    deadline = time.time() + 300
    while child.poll() is None and time.time() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists() and f'"step": {after_step},' in metrics.read_text():
            break
        time.sleep(0.01)
    child.send_signal(sig)
    assert child.wait(timeout=300) == 128 + sig
    message = (run_dir.parent / f"{run_dir.name}.err").read_text()
    found = re.search(rf"stopped by {sig.name} after step (\d+): checkpoint (\S+) is complete; rerun with --resume",
                      message)
    assert found, message[-3000:]
    step = int(found.group(1))
    assert after_step <= step < 12 and found.group(2) == str(checkpoint.latest(run_dir))
    assert checkpoint.latest(run_dir).name == f"step-{step:06d}" and not (run_dir / "model").exists()
    return step


@pytest.mark.slow
def test_stop_signals_checkpoint_then_resume_is_bitwise_identical(shards_dir, tmp_path):
    """SIGUSR1 (a scheduler's time-limit warning), then SIGTERM (scancel, preemption) mid-run: the step finishes,
    a checkpoint is written, the CLI exits 128 + signal saying how to go on; --resume ends bit for bit where an
    uninterrupted run ends."""
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert cli_child(shards_dir, reference).wait(timeout=300) == 0
    first = stop_with(signal.SIGUSR1, shards_dir, interrupted, after_step=2)
    second = stop_with(signal.SIGTERM, shards_dir, interrupted, after_step=first + 2)
    assert cli_child(shards_dir, interrupted).wait(timeout=300) == 0
    a = load_file(reference / "model" / "model.safetensors")
    b = load_file(interrupted / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"stopped after {first}, {second}"
    assert losses(interrupted) == losses(reference)


@pytest.mark.slow
def test_resume_in_process_after_max_steps(tiny_recipe, shards_dir, tmp_path):
    train(tiny_recipe, shards_dir, tmp_path / "a")
    train(tiny_recipe, shards_dir, tmp_path / "b", max_steps=5)  # checkpoints at 3 and 5
    summary = train(tiny_recipe, shards_dir, tmp_path / "b", resume=True)
    assert summary.steps == 12
    a, b = load_file(tmp_path / "a/model/model.safetensors"), load_file(tmp_path / "b/model/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("change", "message"), [
    ({"model.vocab_size": 4096, "tokenizer.vocab_size": 4096}, "4096"),
    ({"train.seq_len": 64, "train.batch_tokens": 512}, "packed for seq_len 32"),
    ({"train.batch_tokens": 32 * 400, "train.micro_batch_size": 4}, "fewer than one global batch"),
])
def test_data_mismatches_fail_before_step_0(shards_dir, tmp_path, change, message):
    recipe = load_recipe("croissant-1m", overrides={**TINY, **change})
    with pytest.raises(UsageError, match=message):
        train(recipe, shards_dir, tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_shards_from_another_tokenizer_are_refused(tmp_path):
    other = write_shards(tmp_path / "other", vocab=1000)
    with pytest.raises(UsageError, match="1000-token vocabulary"):
        train(load_recipe("croissant-1m", overrides=TINY), other, tmp_path / "run")


def test_missing_shards_directory(tmp_path):
    with pytest.raises(UsageError, match="not a shards directory"):
        train(load_recipe("croissant-1m", overrides=TINY), tmp_path / "none", tmp_path / "run")


def test_nan_loss_stops_with_the_last_good_checkpoint(tiny_recipe, shards_dir, tmp_path, monkeypatch):
    from fournil.lm.llama import Llama

    forward, calls = Llama.forward, {"n": 0}

    def poisoned(self, *args, **kwargs):
        calls["n"] += self.training  # validation forwards do not count
        out = forward(self, *args, **kwargs)
        return out * float("nan") if calls["n"] > 8 * 2 else out  # from step 9 on (2 micro-batches per step)

    monkeypatch.setattr(Llama, "forward", poisoned)
    with pytest.raises(FournilError, match=r"loss became nan at step 9; last good checkpoint: .*step-000006"):
        train(tiny_recipe, shards_dir, tmp_path)


def test_cli_train_and_plot(shards_dir, tmp_path, capsys, assert_chart):
    run = tmp_path / "run"
    sets = [f"--set={k}={v}" for k, v in {**TINY, "train.steps": 4, "train.eval_interval": 2}.items()]
    assert main(["train", "croissant-1m", "--shards", str(shards_dir), "--out", str(run), "--json", "-q", *sets]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 4 and set(result["validation_bpb"]) == {"fr", "en"}
    assert main(["train", "plot", str(run)]) == 0
    for name in ("loss.png", "throughput.png"):
        assert_chart(run / "plots" / name)


def test_cli_export_any_checkpoint(tiny_recipe, shards_dir, tmp_path, capsys):
    train(tiny_recipe, shards_dir, tmp_path / "run", max_steps=6)
    assert main(["train", "export", str(tmp_path / "run"), str(tmp_path / "m3"), "--step", "3", "-q"]) == 0
    assert main(["train", "export", str(tmp_path / "run"), str(tmp_path / "m"), "--dtype", "bfloat16", "-q"]) == 0
    assert json.loads((tmp_path / "m/config.json").read_text())["dtype"] == "bfloat16"
    assert main(["train", "export", str(tmp_path / "run"), str(tmp_path / "x"), "--step", "4"]) == 2
    assert "available: step-000003, step-000006" in capsys.readouterr().err


def test_cli_bad_override(shards_dir, tmp_path, capsys):
    assert main(["train", "croissant-1m", "--shards", str(shards_dir), "--out", str(tmp_path), "--set", "train.lr"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_continued_pretraining_starts_from_the_given_model(tiny_recipe, shards_dir, tmp_path):
    base = train(tiny_recipe, shards_dir, tmp_path / "base")
    cpt = train(load_recipe("croissant-1m", overrides={**TINY, "train.steps": 3, "train.warmup_steps": 1}),
                shards_dir, tmp_path / "cpt", init_from=tmp_path / "base/model")
    first = losses(tmp_path / "cpt")[0]
    assert first < 5.0 < losses(tmp_path / "base")[0]  # a trained start, not ln(2048) ≈ 7.6
    assert cpt.steps == 3 and base.steps == 12


def test_continued_pretraining_explains_a_tokenizer_mismatch(tmp_path):
    from fournil.lm.config import ModelConfig
    from fournil.lm.hf import save_model
    from fournil.lm.llama import Llama

    model_dir = tmp_path / "smol"
    save_model(Llama(ModelConfig(dim=64, n_layers=1, n_heads=4, ffn_dim=176, vocab_size=1000)), model_dir)
    with pytest.raises(UsageError, match=r"own tokenizer: .*1000-token vocabulary.*2048 tokens"):
        train(load_recipe("croissant-1m", overrides=TINY), write_shards(tmp_path / "s"), tmp_path / "r",
              init_from=model_dir)
    save_model(Llama(ModelConfig(dim=64, n_layers=1, n_heads=4, ffn_dim=176, vocab_size=2048)), model_dir)
    (model_dir / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    shards = write_shards(tmp_path / "s2", tokenizer_sha256="0" * 64)
    with pytest.raises(UsageError, match="is not the tokenizer the shards were made with"):
        train(load_recipe("croissant-1m", overrides=TINY), shards, tmp_path / "r2", init_from=model_dir)
    # shards packed with this very tokenizer.json (pack records its file hash) are accepted
    from fournil.artifacts import sha256_file

    same = write_shards(tmp_path / "s3", tokenizer_sha256=sha256_file(model_dir / "tokenizer.json"))
    overrides = {**TINY, "train.steps": 2, "train.warmup_steps": 1}
    assert train(load_recipe("croissant-1m", overrides=overrides), same, tmp_path / "r3", init_from=model_dir).steps == 2


def test_tensorboard_logger(tiny_recipe, shards_dir, tmp_path):
    from dataclasses import replace

    recipe = replace(tiny_recipe, train=replace(tiny_recipe.train, loggers=("tensorboard",), steps=4))
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="pip install tensorboard"):
            train(recipe, shards_dir, tmp_path)
        return
    train(recipe, shards_dir, tmp_path)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
