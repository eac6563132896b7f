"""SIGKILL at random points, then resume: the outputs are identical to an uninterrupted run's.

Kills are real signals to real processes. Training children are forked from a warm "zygote" interpreter that has
already imported torch, so ten kills cost ten forks rather than ten 5-second interpreter start-ups; the child
that is killed is still a separate process running the shipped `train()` with its own files and state.
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fournil.corpus import iter_sample
from fournil.train import checkpoint
from tests.reliability.conftest import CHILD_ENV, tree_files
from tests.train.conftest import TINY, write_shards

pytestmark = pytest.mark.slow
LONG = {**TINY, "train.steps": 16, "train.checkpoint_interval": 2, "train.eval_interval": 8}

ZYGOTE = """
import json, os, sys, traceback
import torch
torch.set_num_threads(1)
from fournil.recipe import load_recipe
from fournil.train.loop import train
out = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        code = 0
        try:
            train(load_recipe("croissant-1m", overrides=job["overrides"]), job["shards"], job["run"], resume=True)
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    print(pid, file=out, flush=True)
    print(os.waitpid(pid, 0)[1], file=out, flush=True)
"""


class Zygote:
    """A warm interpreter that forks one training process per request and reports its pid and wait status."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=CHILD_ENV, text=True)

    def start(self, shards: Path, run: Path) -> int:
        self.proc.stdin.write(json.dumps({"overrides": LONG, "shards": str(shards), "run": str(run)}) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def status(self) -> int:
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def last_step(run: Path) -> int:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return max((json.loads(line).get("step", 0) for line in lines if line.endswith("}")), default=0)


def in_progress_checkpoints(run: Path, at_least: int, since: float) -> list[Path]:
    """Checkpoint assemblies of step >= at_least created after `since` (older ones are a killed save's leftovers)."""
    root = run / "checkpoints"
    found = []
    for path in root.glob(".tmp-step-*") if root.is_dir() else []:
        try:
            if int(path.name.rsplit("-", 1)[1]) >= at_least and path.stat().st_ctime >= since:
                found.append(path)
        except FileNotFoundError:  # renamed into place meanwhile
            continue
    return found


def assert_latest_checkpoint_loads(run: Path) -> None:
    from fournil.lm.hf import load_model

    latest = checkpoint.latest(run)
    if latest is None:
        return
    model = load_model(latest / "model")
    state = checkpoint.load(latest, model, torch.optim.AdamW(model.parameters()))
    assert state["step"] == int(latest.name.split("-")[1])


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shards(tmp_path_factory.mktemp("shards"))


def test_train_survives_ten_random_sigkills_bit_for_bit(shards, tmp_path, random_seed):
    """Ten kills at random steps (three of them inside a checkpoint write), resumed each time: same weights."""
    rng = random.Random(random_seed)
    zygote = Zygote()
    try:
        reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
        zygote.start(shards, reference)
        assert zygote.status() == 0
        # Targets stop two steps short of the end: a kill lands inside step target+1 at the latest, so the child
        # can never have finished on its own first (a fast host ran the last steps inside a fixed sleep before).
        kills = sorted(rng.sample(range(1, LONG["train.steps"] - 1), 10))
        in_checkpoint = set(rng.sample(range(10), 3))
        hits = 0
        for i, step in enumerate(kills):
            started = time.time() - 0.01
            pid = zygote.start(shards, interrupted)
            deadline = time.time() + 120
            while alive(pid) and time.time() < deadline:
                if i in in_checkpoint:
                    if in_progress_checkpoints(interrupted, step, started):
                        break
                    if last_step(interrupted) >= LONG["train.steps"]:  # every save slipped between two polls:
                        break  # kill inside the final export rather than let the child finish
                elif last_step(interrupted) >= step:
                    wake = time.time() + rng.uniform(0, 0.15)  # anywhere inside the step that follows...
                    while time.time() < wake and last_step(interrupted) <= step:  # ...but not past its end
                        time.sleep(0.001)
                    break
                time.sleep(0.001)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pytest.fail(f"the child ended by itself (wait status {zygote.status()}) before the kill "
                            f"aimed at step {step}; kills {kills}")
            status = zygote.status()
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, kills
            if i in in_checkpoint and in_progress_checkpoints(interrupted, step, started):
                hits += 1  # killed mid-write: the half-assembled checkpoint is hidden, the last complete one loads
                assert_latest_checkpoint_loads(interrupted)
        zygote.start(shards, interrupted)
        assert zygote.status() == 0
    finally:
        zygote.close()
    assert hits >= 1, "no kill landed inside a checkpoint write"
    a = load_file(reference / "model" / "model.safetensors")
    b = load_file(interrupted / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"kills at {kills}"
    metrics = [(reference / "metrics.jsonl").read_text(), (interrupted / "metrics.jsonl").read_text()]
    losses = [[json.loads(line)["loss"] for line in m.splitlines() if '"loss"' in line] for m in metrics]
    assert losses[0] == losses[1] and len(losses[0]) == LONG["train.steps"]
    assert not list((interrupted / "checkpoints").glob(".tmp-step-*"))  # leftovers were cleaned by a later save


# -- corpus and bake: the real CLI, killed with its whole process group (datatrove workers included) ----------

def small_sources(root: Path, sizes: dict[str, int]) -> list[str]:
    lines = []
    for category, n in sizes.items():
        path = root / f"{category}.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in itertools.islice(iter_sample(category), n))
        lines.append(f"    {category}: {{path: {path}, category: {category}, licence: see-sample}}")
    return lines


def run_killed(command: list[str], kill_after: float | None) -> subprocess.CompletedProcess | None:
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CHILD_ENV,
                             start_new_session=True)
    if kill_after is None:
        stdout, stderr = child.communicate(timeout=600)
        assert child.returncode == 0, stderr[-3000:]
        return subprocess.CompletedProcess(command, 0, stdout, stderr)
    try:
        child.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
    child.communicate()
    return None


def timed(command: list[str]) -> float:
    start = time.time()
    run_killed(command, None)
    return time.time() - start


def test_corpus_run_killed_three_times_gives_the_same_corpus(tmp_path, random_seed):
    root = tmp_path / "sources"
    root.mkdir()
    lines = small_sources(root, {"fr": 60, "en": 60, "code": 6, "parallel": 100})
    (root / "corpus.yaml").write_text("sources:\n" + "\n".join(lines).replace("    ", "  ") + "\n")
    command = [sys.executable, "-m", "fournil", "corpus", "run", str(root / "corpus.yaml"), "-q", "--workers", "2",
               "--tasks", "4", "--out"]
    duration = timed([*command, str(tmp_path / "reference")])
    rng = random.Random(random_seed)
    for at in sorted(rng.uniform(0.5, duration) for _ in range(3)):
        run_killed([*command, str(tmp_path / "killed")], kill_after=at)
    run_killed([*command, str(tmp_path / "killed")], None)
    a, b = tree_files(tmp_path / "reference" / "docs"), tree_files(tmp_path / "killed" / "docs")
    assert a and a == b
    assert without_time(tmp_path / "reference" / "stats.json") == without_time(tmp_path / "killed" / "stats.json")


BAKE = """\
name: kill-bake
corpus:
  sources:
{sources}
tokenizer:
  vocab_size: 600
  weights: {{fr: 1.0, en: 1.0, code: 0.25, parallel: 0.5}}
model: {{dim: 32, n_layers: 1, n_heads: 4, ffn_dim: 64, vocab_size: 600, max_seq_len: 64}}
train: {{lr: 3.0e-3, warmup_steps: 2, steps: 8, seq_len: 32, batch_tokens: 128, micro_batch_size: 4,
        log_interval: 1, eval_interval: 4, checkpoint_interval: 2, eval_tokens: 256, peak_flops: 1.0e9}}
"""


def test_bake_killed_twice_gives_the_same_artifacts(tmp_path, random_seed):
    """`fournil bake --only pretrain` (corpus → tokenizer → shards → pretrain) killed at two random moments."""
    root = tmp_path / "sources"
    root.mkdir()
    lines = small_sources(root, {"fr": 60, "en": 60, "code": 6, "parallel": 200})
    (root / "bake.yaml").write_text(BAKE.format(sources="\n".join(lines)))
    command = [sys.executable, "-m", "fournil", "bake", str(root / "bake.yaml"), "--only", "pretrain", "-q", "--out"]
    duration = timed([*command, str(tmp_path / "reference")])
    rng = random.Random(random_seed)
    for at in sorted(rng.uniform(1.0, duration) for _ in range(2)):
        run_killed([*command, str(tmp_path / "killed")], kill_after=at)
    run_killed([*command, str(tmp_path / "killed")], None)
    ref, killed = tmp_path / "reference", tmp_path / "killed"
    assert all((killed / ".bake" / f"{step}.json").is_file() for step in ("corpus", "tokenizer", "shards", "pretrain"))
    assert tree_files(ref / "corpus" / "docs") == tree_files(killed / "corpus" / "docs")
    assert without_time(ref / "corpus" / "stats.json") == without_time(killed / "corpus" / "stats.json")
    assert (ref / "tokenizer" / "tokenizer.json").read_bytes() == (killed / "tokenizer" / "tokenizer.json").read_bytes()
    shards = [tree_files(d / "shards") for d in (ref, killed)]
    for files in shards:  # the manifest records its creation time; everything else must match byte for byte
        files.pop("fournil.json")
    assert shards[0] == shards[1]
    a = load_file(ref / "pretrain" / "model" / "model.safetensors")
    b = load_file(killed / "pretrain" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def without_time(stats: Path) -> dict:
    data = json.loads(stats.read_text())
    data.pop("seconds")
    return data


WRITER = """
import sys, time
from fournil import artifacts
with artifacts.atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a shard")
    print(tmp, flush=True)
    time.sleep(600)
"""


def test_a_writer_killed_mid_write_leaves_no_temporary_file_behind_the_next_write(tmp_path):
    """SIGKILL skips atomic_path's (and scratch_dir's) cleanup; the next write into that directory removes the dead
    writer's file and folder (a rerun's output must equal a clean run's, file for file) but never a live writer's,
    nor one from another machine sharing the directory."""
    from fournil import artifacts

    def writer(name: str) -> tuple[subprocess.Popen, Path]:
        child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / name)], stdout=subprocess.PIPE,
                                 text=True, env=CHILD_ENV)
        return child, Path(child.stdout.readline().strip())

    elsewhere = tmp_path / ".shard_00003.bin.another-host.999999999.abcdefgh.tmp"  # no such pid here: not ours
    elsewhere.write_bytes(b"")
    scratch = tmp_path / f".pack.{artifacts._HOST}.999999999.abcdefgh.tmp"  # pack's scratch folder, owner gone
    scratch.mkdir()
    (scratch / "tokens.bin").write_bytes(b"\x01\x00" * 8)
    live, live_tmp = writer("shard_00002.bin")
    dead, dead_tmp = writer("shard_00001.bin")
    dead.kill()
    dead.wait()
    try:
        assert dead_tmp.is_file() and live_tmp.is_file()
        artifacts.write_text(tmp_path / "index.json", "{}")
        assert not dead_tmp.exists() and not scratch.exists()
        assert live_tmp.is_file()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([elsewhere.name, live_tmp.name, "index.json"])
    finally:
        live.kill()
        live.wait()
