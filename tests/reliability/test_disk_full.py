"""Disk full while writing shards and checkpoints: a clear error, a non-zero exit, the previous state intact and no
half-written file under a final name.

Two ways to fill a disk, both real: a tiny tmpfs (ENOSPC; needs root and a container that allows `mount`, skipped
otherwise) and RLIMIT_FSIZE on the child process (EFBIG; works anywhere, SIGXFSZ ignored so the write raises).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fournil import artifacts
from fournil.train import checkpoint
from tests.reliability.conftest import CHILD_ENV, TMPFS, assert_clean_failure, fsize_limited, small_tmpfs
from tests.train.conftest import TINY, write_shards

SETS = [f"--set={k}={v}" for k, v in TINY.items()]
SHARD_WRITER = """
import sys
from fournil.console import FournilError
from tests.train.conftest import write_shards
try:
    write_shards(sys.argv[1], documents=int(sys.argv[2]))
except FournilError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)
"""


def leftovers(directory: Path) -> list[str]:
    """Temporary files of an interrupted atomic write, or checkpoint assemblies, that were not cleaned up."""
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp-"))


def fill(directory: Path, leave_bytes: int) -> None:
    """Take all the space of the file system under `directory` but `leave_bytes`."""
    stat = os.statvfs(directory)
    free = stat.f_bavail * stat.f_frsize
    with open(directory / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))


def write_shards_child(out: Path, documents: int, limit: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SHARD_WRITER, str(out), str(documents)], capture_output=True,
                          text=True, env=CHILD_ENV, timeout=300, preexec_fn=fsize_limited(limit) if limit else None)


def assert_shards_failed_cleanly(result: subprocess.CompletedProcess, out: Path, reason: str) -> None:
    assert_clean_failure(result, "cannot write", reason, code=1)
    assert not leftovers(out), leftovers(out)
    # never published: the manifest, if any, says the writer has not finished, and readers refuse the directory
    assert not (artifacts.read_manifest(out) or {}).get("complete")
    from fournil.console import UsageError
    from fournil.corpus.shards import Shards

    with pytest.raises(UsageError, match=r"incomplete|not a shards directory"):
        Shards(out)


def test_shards_past_the_file_size_limit(tmp_path):
    """Each train shard is ~2000 tokens (4 kB): a 3 kB limit makes the first one fail part-way through."""
    result = write_shards_child(tmp_path / "shards", documents=120, limit=3000)
    assert_shards_failed_cleanly(result, tmp_path / "shards", "File too large")
    assert not list((tmp_path / "shards").glob("train-*.bin"))  # the cut-off shard never got its final name


@TMPFS
def test_shards_on_a_full_disk(tmp_path):
    with small_tmpfs("256k") as mount:
        out = mount / "shards"
        result = write_shards_child(out, documents=3000)
        assert_shards_failed_cleanly(result, out, "No space left on device")


def test_a_complete_shards_directory_survives_a_failed_rewrite_elsewhere(tmp_path):
    """The usual layout: a new --out for a new pack; the failure there leaves the good shards untouched."""
    good = write_shards(tmp_path / "good")
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    result = write_shards_child(tmp_path / "new", documents=120, limit=3000)
    assert result.returncode == 1
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"))


def train_cli(shards: Path, run: Path, *extra: str, preexec=None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fournil", "train", "croissant-1m", "--shards", str(shards), "--out", str(run),
               "-q", *SETS, *extra]
    return subprocess.run(command, capture_output=True, text=True, env=CHILD_ENV, timeout=600, preexec_fn=preexec)


def assert_checkpoint_intact(run: Path, step: int) -> None:
    """The previous checkpoint is still the newest complete one, and it loads (weights and optimizer)."""
    import torch

    from fournil.lm.hf import load_model
    from fournil.recipe import load_recipe

    assert [p.name for p in checkpoint.checkpoint_dirs(run)] == [f"step-{step:06d}"]
    assert not leftovers(run), leftovers(run)
    latest = checkpoint.latest(run)
    model = load_model(latest / "model")
    optimizer = torch.optim.AdamW(model.parameters())
    assert checkpoint.load(latest, model, optimizer)["step"] == step
    assert load_recipe("croissant-1m", overrides=TINY).model.vocab_size == model.config.vocab_size


@pytest.fixture(scope="module")
def run_at_step_3(shards, tmp_path_factory) -> Path:
    """A run stopped after its first checkpoint (step 3), copied by each test that resumes it."""
    run = tmp_path_factory.mktemp("run") / "run"
    first = train_cli(shards, run, "--max-steps", "3")
    assert first.returncode == 0, first.stderr[-2000:]
    return run


@pytest.mark.slow
def test_checkpoint_past_the_file_size_limit(shards, run_at_step_3, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_at_step_3, run)
    result = train_cli(shards, run, "--resume", preexec=fsize_limited(200_000))
    assert_clean_failure(result, "cannot write checkpoint step-000006", "File too large",
                         "step-000003, is intact", code=1)
    assert_checkpoint_intact(run, 3)


@pytest.mark.slow
@TMPFS
def test_checkpoint_on_a_full_disk(shards, run_at_step_3):
    with small_tmpfs("64m") as mount:
        run = mount / "run"
        shutil.copytree(run_at_step_3, run)
        fill(mount, leave_bytes=1 << 20)  # room for metrics lines, not for a checkpoint
        result = train_cli(shards, run, "--resume")
        assert_clean_failure(result, "cannot write checkpoint step-000006", "No space left on device",
                             "step-000003, is intact", code=1)
        (mount / "filler").unlink()
        assert_checkpoint_intact(run, 3)
