"""Training checkpoints: everything needed to continue bit for bit, written so a crash never corrupts one.

    RUN/checkpoints/step-000200/
        model/              a complete Hugging Face model directory (exportable as it is)
        optimizer.pt        AdamW state (tensors and numbers only; loaded with weights_only=True)
        state.json          step, loader position, recipe
        rng.pt              torch RNG state
        fournil.json        manifest, written last

A checkpoint is assembled in a hidden temporary directory and renamed into place in one atomic step; older
checkpoints are deleted only after the new one is complete, so a SIGKILL at any moment leaves the previous
checkpoint intact.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from fournil import artifacts
from fournil.model.hf import load_model, save_model
from fournil.model.llama import Llama

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


def save(
    run_dir: str | Path,
    step: int,
    model: Llama,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_model(model, tmp / "model", dtype="float32")
    with artifacts.atomic_path(tmp / "optimizer.pt") as path:
        torch.save(optimizer.state_dict(), path)
    with artifacts.atomic_path(tmp / "rng.pt") as path:
        torch.save({"torch": torch.get_rng_state()}, path)
    artifacts.write_json(tmp / "state.json", {"step": step, **state})
    artifacts.write_manifest(tmp, producer="fournil.train.checkpoint", step=step)
    if final.exists():  # the same step saved again (a resumed run): replace it, never leave a mix
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-step-*"):  # leftovers of a killed save
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load(checkpoint: Path, optimizer_factory) -> tuple[Llama, torch.optim.Optimizer, dict[str, Any]]:
    """The model, an optimizer made by `optimizer_factory(model)` with its state restored, and state.json."""
    model = load_model(checkpoint / "model", dtype="float32")
    optimizer = optimizer_factory(model)
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    rng = torch.load(checkpoint / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
    return model, optimizer, state
