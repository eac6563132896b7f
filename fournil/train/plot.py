"""PNG charts of a run from its metrics.jsonl: people would rather look at a loss curve than read one."""

from __future__ import annotations

import json
from pathlib import Path

from fournil import artifacts
from fournil.console import UsageError


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise UsageError(f"{run_dir}: no metrics.jsonl (is it a run directory?)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_run(run_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r]
    val = [r for r in records if "val_bpb" in r]
    if not train:
        raise UsageError(f"{run_dir}: metrics.jsonl has no training steps yet")
    out = Path(run_dir) / "plots"
    out.mkdir(exist_ok=True)
    steps = [r["step"] for r in train]

    fig, (ax_loss, ax_val, ax_lr) = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss.plot(steps, [r["loss"] for r in train])
    ax_loss.set(title="training loss (nats/token)", xlabel="step")
    for language in sorted({k for r in val for k in r["val_bpb"]}):
        points = [(r["step"], r["val_bpb"][language]) for r in val if language in r["val_bpb"]]
        ax_val.plot(*zip(*points, strict=True), marker="o", label=language)
    ax_val.set(title="validation bits per byte", xlabel="step")
    if val:
        ax_val.legend()
    ax_lr.plot(steps, [r["lr"] for r in train])
    ax_lr.set(title="learning rate", xlabel="step")
    paths = [artifacts.write_png(fig, out / "loss.png")]

    fig, (ax_tps, ax_mfu) = plt.subplots(1, 2, figsize=(10, 4))
    ax_tps.plot(steps, [r["tokens_per_s"] for r in train])
    ax_tps.set(title="throughput (tokens/s)", xlabel="step")
    mfu = [(r["step"], 100 * r["mfu"]) for r in train if r.get("mfu") is not None]  # None: no known peak
    if mfu:
        ax_mfu.plot(*zip(*mfu, strict=True))
    ax_mfu.set(title="MFU (%)" if mfu else "MFU (not reported: no known peak for this device)", xlabel="step")
    paths.append(artifacts.write_png(fig, out / "throughput.png"))
    return paths
