"""What `fournil bake --plan` needs beyond the stages' own sections. Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field

# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s per GPU).
GPU_PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "L40S": 362e12, "V100": 125e12, "MI300X": 1307e12}


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
        if self.gpus < 1 or self.gpus_per_node < 1 or self.gpus % self.gpus_per_node:
            problems.append(("gpus", f"{self.gpus} GPUs must fill whole nodes of {self.gpus_per_node}"))
        for name, value in self.available_tokens.items():
            if value < 0:
                problems.append((f"available_tokens.{name}", f"must be >= 0, got {value}"))
        return problems
