"""Sampling: the decoding knobs (a flat, kw-only dataclass, checked before any model is loaded) and the functions
that apply them to a step's logits, shared by the decode loop and the server."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fournil.lm import kernels


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


def process_logits(logits: torch.Tensor, seen: torch.Tensor | None, s: SamplingConfig) -> torch.Tensor:
    """(B, V) float32 logits → logits with penalty and filters applied (-inf = never sampled)."""
    if seen is not None and s.repetition_penalty != 1.0:
        penalized = torch.where(logits > 0, logits / s.repetition_penalty, logits * s.repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if s.greedy:
        return logits
    logits = logits / s.temperature
    if 0 < s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= s.top_p  # mass before this token already reaches top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    if s.min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < s.min_p * probs.max(-1, keepdim=True).values, float("-inf"))
    return logits


def pick(logits: torch.Tensor, s: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) processed logits → (B,) token ids."""
    if s.greedy:
        return kernels.argmax(logits)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]
