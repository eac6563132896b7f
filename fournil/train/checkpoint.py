"""Training checkpoints: everything needed to continue bit for bit, written so a crash never corrupts one.

    RUN/checkpoints/step-000200/
        model/              a complete Hugging Face model directory (exportable as it is)
        dcp/                model + AdamW state in torch.distributed.checkpoint format: sharded per rank when
                            distributed, and re-sharded on load, so a run saved on N ranks resumes on M
        state.json          step, loader position, recipe
        rng.pt              torch RNG state of rank 0
        fournil.json        manifest, written last

A checkpoint is assembled in a hidden temporary directory and renamed into place in one atomic step; older
checkpoints are deleted only after the new one is complete, so a SIGKILL at any moment leaves the previous
checkpoint intact.

SIGTERM and SIGUSR1 (Slurm's scancel, preemption, and the `--signal` warning before a time limit) do not kill a
run: it finishes the current step, writes a checkpoint and stops with `Stopped`; `--resume` continues from it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from fournil import artifacts
from fournil.console import FournilError
from fournil.lm.config import ModelConfig
from fournil.lm.hf import save_state_dict
from fournil.train.parallel import World, barrier

STEP_DIR = re.compile(r"^step-(\d{6,})$")


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (artifacts.read_manifest(p) or {}).get("complete")]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest(run_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save(run_dir: str | Path, step: int, model: nn.Module, config: ModelConfig,
         optimizer: torch.optim.Optimizer, state: dict[str, Any], keep: int, world: World) -> Path:
    """Collective: every rank calls it. Rank 0 writes the HF model and publishes the checkpoint."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(world)
    try:
        model_state, optimizer_state = get_state_dict(model, optimizer)
        with _single_process_is_intended():
            dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp / "dcp")
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if world.is_main:
            if config.tie_embeddings:
                full.pop("lm_head.weight", None)
            save_state_dict({k: v.float().contiguous() for k, v in full.items()}, config, tmp / "model")
            with artifacts.atomic_path(tmp / "rng.pt") as path:
                torch.save({"torch": torch.get_rng_state()}, path)
            artifacts.write_json(tmp / "state.json", {"step": step, "world_size": world.size, **state})
            artifacts.write_manifest(tmp, producer="fournil.train.checkpoint", step=step)
    except (Exception, CheckpointException) as exc:  # DCP raises CheckpointException, a BaseException
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back; the last complete checkpoint stays
        previous = latest(run_dir)
        kept = f"the last complete one, {previous.name}, is intact" if previous else "there is no earlier one"
        raise FournilError(f"cannot write checkpoint {final.name} ({_reason(exc)}); {kept}") from exc
    if world.is_main:
        if final.exists():  # the same step saved again (a resumed run): replace it, never leave a mix
            shutil.rmtree(final)
        os.rename(tmp, final)
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".tmp-step-*"):  # leftovers of a killed save
            shutil.rmtree(stale, ignore_errors=True)
    barrier(world)
    return final


def load(checkpoint: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective: restore model and optimizer in place (re-sharding as needed); return state.json."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    target = {"model": model_state, "optimizer": optimizer_state}
    with _single_process_is_intended():
        dcp.load(target, checkpoint_id=checkpoint / "dcp")
    set_state_dict(model, optimizer, model_state_dict=target["model"], optim_state_dict=target["optimizer"])
    torch.set_rng_state(torch.load(checkpoint / "rng.pt", weights_only=True)["torch"])
    return json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Stopped(FournilError):
    """A stop signal ended the run early, after a complete checkpoint; the exit code is 128 + the signal, as if
    the signal had killed the process, so nothing downstream mistakes the run for a finished one."""

    def __init__(self, signum: int, step: int, path: Path):
        self.signum, self.step, self.path = signum, step, path
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name} after step {step}: checkpoint {path} is "
                         f"complete; rerun with --resume to continue from it")


class StopOnSignal:
    """While active, SIGTERM and SIGUSR1 only record their number in `signum` (the first one wins), so the loop
    stops at a step boundary with a checkpoint instead of dying mid-step. Handlers are restored on exit; outside
    the main thread Python cannot install handlers and signals keep their usual effect."""

    def __enter__(self) -> StopOnSignal:
        self.signum = 0
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._record)
        return self

    def _record(self, signum: int, frame: Any) -> None:
        self.signum = self.signum or signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def _reason(exc: BaseException) -> str:
    """The innermost OSError's message (ENOSPC under DCP's and torch.save's wrappers), else the exception's."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        if isinstance(seen, FournilError):
            return str(seen)
        if isinstance(seen, CheckpointException) and seen.failures:  # {rank: (exception, traceback)}
            return _reason(next(iter(seen.failures.values()))[0])
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    for needle in ("No space left on device", "File too large", "Disk quota exceeded"):
        if needle in text:
            return needle
    return f"{type(exc).__name__}: {text[:300]}"


@contextlib.contextmanager
def _single_process_is_intended() -> Iterator[None]:
    """DCP warns when used without a process group; for a single-process run that is exactly the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield
