"""Decoding knobs: a flat, kw-only dataclass (pure data), checked before any model is loaded."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(kw_only=True)
class SamplingConfig:
    """How the next token is picked. temperature 0 is greedy (argmax), as transformers' do_sample=False.

    Processing order follows transformers: repetition penalty, then temperature, top-k, top-p, min-p.
    """

    max_tokens: int = 256  # new tokens per prompt (the model's context length also bounds it)
    temperature: float = 0.0  # 0 → greedy; 1 → the model's distribution
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0  # nucleus: smallest set with cumulative probability ≥ top_p; 1 = off
    min_p: float = 0.0  # drop tokens below min_p × p(most likely) (Nguyen et al. 2024); 0 = off
    repetition_penalty: float = 1.0  # CTRL (Keskar et al. 2019): divide positive / multiply negative logits; 1 = off
    stop: tuple[str, ...] = ()  # generation ends before the first occurrence of any of these strings
    seed: int | None = None  # sampling seed; None = a fresh one each run
    ignore_eos: bool = False  # keep going past end-of-sequence (benchmarks)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def check(self) -> list[tuple[str, str]]:
        """Every bad field, named; each test is written so that NaN fails it (NaN < 0 is False as well)."""
        problems = []
        if self.max_tokens < 0:
            problems.append(("max_tokens", f"must be ≥ 0, got {self.max_tokens}"))
        if not 0 <= self.temperature < math.inf:
            problems.append(("temperature", f"must be finite and ≥ 0 (0 = greedy), got {self.temperature}"))
        if self.top_k < 0:
            problems.append(("top_k", f"must be ≥ 0 (0 = off), got {self.top_k}"))
        if not 0 < self.top_p <= 1:
            problems.append(("top_p", f"must be in (0, 1], got {self.top_p}"))
        if not 0 <= self.min_p < 1:
            problems.append(("min_p", f"must be in [0, 1), got {self.min_p}"))
        if not 0 < self.repetition_penalty < math.inf:
            problems.append(("repetition_penalty", f"must be finite and > 0 (1 = off), got {self.repetition_penalty}"))
        if any(not s for s in self.stop):
            problems.append(("stop", "stop strings must not be empty"))
        return problems

    def validate(self) -> SamplingConfig:
        """Raise one UsageError listing every problem (the CLI exits 2)."""
        if problems := self.check():
            from fournil.console import UsageError

            raise UsageError("invalid sampling options: " + "; ".join(f"{k}: {m}" for k, m in problems))
        return self
