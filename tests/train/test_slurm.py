"""scripts/slurm/train.sbatch on a real Slurm cluster (scripts/cluster/slurm-local): 2 CPU tasks train like one
process, and a run stopped by scancel or by the time-limit signal resumes to bitwise the same weights and log.

Jobs are followed without accounting: `squeue -j ID -h` until the job is gone, then the job's output file and
the run directory are read. Other jobs may share the cluster: names are unique and only our own ids are cancelled.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fournil.recipe import load_recipe
from fournil.train import checkpoint
from fournil.train.loop import train
from tests.train.conftest import TINY

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).parents[2]
SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"
# 40 steps of ~0.2 s on 2 busy cores: a window wide enough for a signal to land mid-run. The recipe's own lr
# (TINY's 1e-2 drifts 1.2e-4 between 1 and 2 ranks by step 39 here; 3e-3 stays within 1e-5)
OVERRIDES = {**TINY, "train.steps": 40, "train.lr": 3e-3, "train.checkpoint_interval": 10,
             "train.eval_interval": 20}
STEPS = OVERRIDES["train.steps"]


class Jobs:
    """sbatch/squeue/scancel for this module's jobs; whatever is still queued at the end is cancelled."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def submit(self, shards: Path, run: Path) -> tuple[str, Path]:
        # COLUMNS: log lines unwrapped, so a path in them can be searched for
        env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT), "COLUMNS": "500"}
        sets = [arg for key, value in OVERRIDES.items() for arg in ("--set", f"{key}={value}")]
        result = subprocess.run(
            ["sbatch", "--parsable", f"--job-name=fournil-test-train-{os.getpid()}", "--ntasks-per-node=2",
             "--cpus-per-task=1", "--time=20", f"--output={run.parent}/{run.name}-%j.out", str(SBATCH),
             "croissant-1m", str(shards), str(run), *sets],
            env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        job = result.stdout.strip().split(";")[0]
        self.ids.append(job)
        return job, run.parent / f"{run.name}-{job}.out"

    @staticmethod
    def state(job: str) -> str:
        """PENDING/RUNNING/…, or "" once the job has left the queue."""
        result = subprocess.run(["squeue", "-j", job, "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
        return result.stdout.strip()

    def wait(self, job: str, output: Path, timeout: float = 600, until=None) -> None:
        """Until the job has left the queue (or `until()` holds while it runs); fail with its output otherwise."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.state(job)
            if not state or (until is not None and until(state)):
                return
            time.sleep(0.2)
        text = output.read_text() if output.exists() else "(no output yet)"
        pytest.fail(f"job {job} still {self.state(job)!r} after {timeout:.0f} s; its output:\n{text[-4000:]}")

    def cancel(self, job: str, *options: str) -> None:
        subprocess.run(["scancel", *options, job], check=True, timeout=30)


@pytest.fixture(scope="module")
def jobs(slurm_cluster):
    jobs = Jobs()
    yield jobs
    for job in jobs.ids:
        if jobs.state(job):
            jobs.cancel(job)


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def logged_step(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    return max((json.loads(line)["step"] for line in lines if line.endswith("}")), default=0)


def finished(output: Path, run: Path) -> str:
    """The job's whole output, after checking its last start ran without error to the final model. (An earlier
    start that was signalled shows torchrun's own SignalException traceback: torchrun is signalled too.)"""
    text = output.read_text()
    last_start = text[text.rindex("fournil-train: job "):]
    assert "Traceback" not in last_start and "error:" not in last_start, last_start[-4000:]
    assert (run / "model" / "model.safetensors").is_file(), last_start[-4000:]
    return text


def assert_same_run(run: Path, reference: Path) -> None:
    a, b = load_file(reference / "model/model.safetensors"), load_file(run / "model/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(run) == losses(reference)  # bitwise: the log was rewound to the checkpoint, then re-grown
    assert (run / "metrics.jsonl").read_text().count('"val_bpb"') == 2  # evaluations at 20 and 40, once each


@pytest.fixture(scope="module")
def uninterrupted_job(jobs, shards_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("slurm") / "uninterrupted"
    return (*jobs.submit(shards_dir, run), run)


@pytest.fixture(scope="module")
def single(uninterrupted_job, shards_dir, tmp_path_factory):
    """The 1-process run, trained here while the uninterrupted job runs on the cluster."""
    run = tmp_path_factory.mktemp("single") / "run"
    torch.set_num_threads(1)
    train(load_recipe("croissant-1m", overrides=OVERRIDES), shards_dir, run)
    return run


@pytest.fixture(scope="module")
def uninterrupted(jobs, uninterrupted_job, single):
    job, output, run = uninterrupted_job
    jobs.wait(job, output)
    return run, finished(output, run)


def test_two_tasks_match_one_process(uninterrupted, single):
    """sbatch --ntasks-per-node=2 on a CPU node: torchrun starts 2 gloo ranks, each half the batch."""
    run, output = uninterrupted
    assert "1 node(s) × 2 process(es) (CPU, gloo)" in output
    assert losses(run) == pytest.approx(losses(single), abs=1e-4)
    assert len(losses(run)) == STEPS
    assert [p.name for p in checkpoint.checkpoint_dirs(run)] == ["step-000030", "step-000040"]


def stop_mid_run(jobs: Jobs, shards: Path, run: Path, *signal: str) -> tuple[str, Path]:
    """Submit, wait until the run has logged step 3, then signal the job with scancel."""
    job, output = jobs.submit(shards, run)
    jobs.wait(job, output, until=lambda state: state == "RUNNING" and logged_step(run) >= 3)
    assert jobs.state(job) == "RUNNING", "the run ended before it could be signalled"
    jobs.cancel(job, *signal)
    return job, output


def stopped_step(output: Path, run: Path) -> int:
    text = output.read_text()
    found = re.search(r"stopped by SIGTERM after step (\d+)", text)
    assert found, text[-4000:]
    step = int(found.group(1))
    assert 3 <= step < STEPS, text[-4000:]
    assert checkpoint.latest(run).name == f"step-{step:06d}"  # complete, and the newest
    return step


def test_scancel_then_resubmit_is_bitwise_identical(jobs, shards_dir, tmp_path, uninterrupted):
    """scancel: SIGTERM to every rank; they finish the step, checkpoint, exit within KillWait. Resubmitting
    the same command resumes from that checkpoint and ends exactly where the uninterrupted run did."""
    run = tmp_path / "cancelled"
    job, output = stop_mid_run(jobs, shards_dir, run)
    jobs.wait(job, output)
    step = stopped_step(output, run)
    assert not (run / "model").exists()
    assert logged_step(run) == step

    job, output = jobs.submit(shards_dir, run)
    jobs.wait(job, output)
    assert f"resuming from {run}/checkpoints/step-{step:06d}" in finished(output, run)
    assert_same_run(run, uninterrupted[0])


def test_time_limit_signal_checkpoints_and_requeues(jobs, shards_dir, tmp_path, uninterrupted):
    """SIGUSR1 to the batch script, which is what `#SBATCH --signal=B:USR1@300` delivers 5 minutes before the
    time limit: the ranks stop with a checkpoint, the job requeues itself and the second start finishes."""
    run = tmp_path / "requeued"
    job, output = stop_mid_run(jobs, shards_dir, run, "--batch", "--signal=USR1")
    jobs.wait(job, output, until=lambda state: state == "PENDING")
    assert jobs.state(job) == "PENDING", output.read_text()[-4000:]  # requeued, not ended
    step = stopped_step(output, run)
    # slurmctld holds a requeued job for about two minutes before it may start again; let it start now, but not
    # within the second of the requeue: slurmd revokes the job's credential then and compares whole seconds, so a
    # start in that same second is killed ("Job credential revoked")
    time.sleep(2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, timeout=30)
    jobs.wait(job, output)
    text = finished(output, run)
    assert "requeueing job" in text and f"job {job} start 1:" in text
    assert f"resuming from {run}/checkpoints/step-{step:06d}" in text
    assert_same_run(run, uninterrupted[0])
