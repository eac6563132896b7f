"""Learning-rate schedules as pure functions of the step (so the schedule's whole state is the step number)."""

from __future__ import annotations

import math

from fournil.train.config import TrainConfig


def lr_at(step: int, config: TrainConfig) -> float:
    """lr for optimizer step `step` (0-based): linear warmup, then cosine or warmup-stable-decay (WSD).

    cosine: from lr down to min_lr_ratio·lr over the steps after warmup.
    wsd: constant lr until the last decay_fraction of steps, then linear decay to min_lr_ratio·lr
    (Hu et al. 2024, MiniCPM), which lets a run be extended without restarting the schedule.
    """
    peak, floor = config.lr, config.lr * config.min_lr_ratio
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    if config.schedule == "cosine":
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps - 1)
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(1.0, progress)))
    decay_start = config.steps - max(1, round(config.decay_fraction * config.steps))
    if step < decay_start:
        return peak
    progress = (step - decay_start) / max(1, config.steps - decay_start - 1)
    return peak + (floor - peak) * min(1.0, progress)
