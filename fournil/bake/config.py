"""What `fournil bake --plan` needs beyond the stages' own sections. Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field

from fournil.train.flops import GPUS

# Dense half-precision tensor-core peaks per GPU (bf16; float16 where there is no bf16), the table training's MFU uses.
GPU_PEAK_FLOPS = {gpu.key: gpu.bf16 or gpu.fp16 for gpu in GPUS}


@dataclass(kw_only=True)
class PlanConfig:
    # Unique tokens available per category before mixing; defaults are CroissantLLM's corpus (arXiv 2402.00786).
    available_tokens: dict[str, float] = field(default_factory=lambda: {
        "en": 655.64e9, "fr": 303.51e9, "code": 141.43e9, "parallel": 35.78e9})
    gpu: str = "A100"
    gpus: int = 240  # CroissantLLM trained on 240 A100s
    gpus_per_node: int = 8
    mfu: float = 0.4  # model FLOPs utilisation to plan with

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.gpu not in GPU_PEAK_FLOPS:
            problems.append(("gpu", f"{self.gpu!r} is not known; choose one of: {', '.join(GPU_PEAK_FLOPS)}"))
        if not 0 < self.mfu <= 1:
            problems.append(("mfu", f"must be in (0, 1], got {self.mfu}"))
        if self.gpus_per_node < 1:
            problems.append(("gpus_per_node", f"must be >= 1, got {self.gpus_per_node}"))
        elif self.gpus < 1 or self.gpus % self.gpus_per_node:
            problems.append(("gpus", f"{self.gpus} GPUs must fill whole nodes of {self.gpus_per_node}"))
        for name, value in self.available_tokens.items():
            if value < 0:
                problems.append((f"available_tokens.{name}", f"must be >= 0, got {value}"))
        return problems


@dataclass(kw_only=True)
class Rung:
    """One model of a scaling ladder: its shape (the rest of the model section is shared)."""

    name: str
    dim: int
    n_layers: int
    n_heads: int
    ffn_dim: int
    lr: float | None = None  # None: the recipe's train.lr

    def check(self) -> list[tuple[str, str]]:
        problems = [(k, f"must be > 0, got {getattr(self, k)}") for k in ("dim", "n_layers", "n_heads", "ffn_dim")
                    if getattr(self, k) <= 0]
        if not problems and self.dim % self.n_heads:
            problems.append(("n_heads", f"{self.n_heads} does not divide dim={self.dim}"))
        if self.lr is not None and self.lr <= 0:
            problems.append(("lr", f"must be > 0 or null, got {self.lr}"))
        return problems


@dataclass(kw_only=True)
class LadderConfig:
    """`fournil scaling run`: small models trained on the same shards, fitted as loss vs compute."""

    rungs: list[Rung]
    tokens_per_param: float = 20.0  # Hoffmann et al. 2022's compute-optimal ratio sets each rung's steps
    max_steps: int = 0  # cap on any rung's steps (a CPU smoke ladder); 0 = none
    evals: int = 4  # validations per rung (the curves in scaling.png)
    extrapolate: dict[str, float] = field(default_factory=dict)  # name → training FLOPs to predict bits/byte at

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if len(self.rungs) < 2:
            problems.append(("rungs", f"a ladder needs at least 2 rungs to fit, got {len(self.rungs)}"))
        names = [r.name for r in self.rungs]
        if len(set(names)) != len(names):
            problems.append(("rungs", f"rung names must be unique, got {names}"))
        if self.tokens_per_param <= 0:
            problems.append(("tokens_per_param", f"must be > 0, got {self.tokens_per_param}"))
        if self.max_steps < 0 or self.evals < 1:
            problems.append(("max_steps" if self.max_steps < 0 else "evals", "must be >= 0 (max_steps) / >= 1 (evals)"))
        for name, flops in self.extrapolate.items():
            if flops <= 0:
                problems.append((f"extrapolate.{name}", f"training FLOPs must be > 0, got {flops}"))
        return problems
