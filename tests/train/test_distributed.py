"""Data parallelism with real processes: torchrun, 2 ranks on gloo (CPU), FSDP2 and DDP."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fournil.train import checkpoint
from fournil.train.loop import train
from tests.train.conftest import TINY

pytestmark = pytest.mark.slow

SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from fournil.recipe import load_recipe
from fournil.train.loop import train
overrides = {overrides!r}
max_steps = {max_steps!r}
train(load_recipe("croissant-1m", overrides=overrides), sys.argv[1], sys.argv[2], resume=True, max_steps=max_steps)
"""


def torchrun(ranks: int, shards: Path, run_dir: Path, overrides: dict, max_steps: int | None = None) -> None:
    script = run_dir.parent / f"{run_dir.name}.py"
    script.write_text(SCRIPT.format(overrides=overrides, max_steps=max_steps))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
         str(script), str(shards), str(run_dir)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


@pytest.fixture(scope="module")
def single(shards_dir, tmp_path_factory):
    from fournil.recipe import load_recipe

    run = tmp_path_factory.mktemp("single")
    torch.set_num_threads(1)
    train(load_recipe("croissant-1m", overrides=TINY), shards_dir, run)
    return run


@pytest.mark.parametrize("mode", ["fsdp", "ddp"])
def test_two_ranks_match_one_rank(shards_dir, tmp_path, single, mode):
    """2 ranks × half the batch each = 1 rank × the whole batch: same loss curve within float tolerance."""
    run = tmp_path / mode
    torchrun(2, shards_dir, run, {**TINY, "train.parallel": mode})
    assert losses(run) == pytest.approx(losses(single), abs=1e-4)
    a, b = load_file(single / "model/model.safetensors"), load_file(run / "model/model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3)


def test_saved_on_two_ranks_resumes_on_one(shards_dir, tmp_path, single):
    """A sharded (DCP) checkpoint written by 2 FSDP ranks is re-sharded and continued by 1 process."""
    run = tmp_path / "n-to-m"
    torchrun(2, shards_dir, run, {**TINY, "train.parallel": "fsdp"}, max_steps=6)
    state = json.loads((run / "checkpoints/step-000006/state.json").read_text())
    assert state["world_size"] == 2
    from fournil.recipe import load_recipe

    train(load_recipe("croissant-1m", overrides=TINY), shards_dir, run, resume=True)
    assert losses(run) == pytest.approx(losses(single), abs=1e-4)


STOPPING = """
import os, sys, torch
torch.set_num_threads(1)
from pathlib import Path
from fournil.recipe import load_recipe
from fournil.train.checkpoint import Stopped
from fournil.train.loop import train
rank, run = os.environ["RANK"], Path(sys.argv[2])
(run.parent / f"pid-{{rank}}").write_text(str(os.getpid()))
try:
    train(load_recipe("croissant-1m", overrides={overrides!r}), sys.argv[1], run, resume=True)
except Stopped as stop:
    (run.parent / f"stopped-{{rank}}").write_text(str(stop.step))
    sys.exit(stop.exit_code)
"""


def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(shards_dir, tmp_path, single):
    """SIGTERM to rank 1 only: rank 0 stops after the same step (the stop flag is all-reduced each step), so the
    checkpoint both write is consistent and the resumed run still matches the 1-rank curve."""
    run, overrides = tmp_path / "run", {**TINY, "train.parallel": "fsdp"}
    script = tmp_path / "stopping.py"
    script.write_text(STOPPING.format(overrides=overrides))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
         str(shards_dir), str(run)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while launcher.poll() is None and time.time() < deadline:
        if (run / "metrics.jsonl").exists() and '"step": 2,' in (run / "metrics.jsonl").read_text():
            break
        time.sleep(0.01)
    os.kill(int((tmp_path / "pid-1").read_text()), signal.SIGTERM)
    stderr = launcher.communicate(timeout=300)[1]
    assert launcher.returncode != 0  # torchrun reports the stop (exit 143) of its workers
    step = int((tmp_path / "stopped-0").read_text())
    assert (tmp_path / "stopped-1").read_text() == str(step), stderr[-3000:]
    assert 2 <= step < 12
    state = json.loads((checkpoint.latest(run) / "state.json").read_text())
    assert state["step"] == step and state["world_size"] == 2
    torchrun(2, shards_dir, run, overrides)
    assert losses(run) == pytest.approx(losses(single), abs=1e-4)
