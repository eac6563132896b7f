"""Evaluation settings: a flat, kw-only dataclass (pure data; the recipe's `eval` section)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(kw_only=True)
class EvalConfig:
    """What `fournil eval run` scores and how; defaults follow lm-eval so that scores compare."""

    tasks: list[str] = field(default_factory=lambda: ["french_bench_mc", "translation"])  # task or group names
    data: str = "data/eval"  # local data directory: <dataset>/<split>.jsonl in the hub datasets' schemas
    num_fewshot: int | None = None  # None: each task's default (0, as lm-eval; translation 5)
    limit: int | None = None  # first N documents per task; None = all
    seed: int = 1234  # few-shot sampling seed (lm-eval's fewshot_random_seed default)
    batch_tokens: int = 4096  # tokens per log-likelihood forward pass, padding included
    batch_size: int = 16  # prompts per generation batch
    max_gen_tokens: int | None = None  # None: each task's default (256, lm-eval's max_gen_toks)
    chat: bool = False  # translation through the model's chat template (fine-tuned models), not few-shot

    def check(self) -> list[tuple[str, str]]:
        """Cross-field rules; each problem names the field to fix."""
        from fournil.eval.tasks import GROUPS, TASKS

        problems = []
        unknown = [t for t in self.tasks if t not in TASKS and t not in GROUPS]
        if not self.tasks:
            problems.append(("tasks", "expected at least one task or group"))
        if unknown:
            problems.append(("tasks", f"unknown: {', '.join(unknown)} (groups: {', '.join(GROUPS)})"))
        for name in ("num_fewshot", "limit", "max_gen_tokens"):
            value = getattr(self, name)
            if value is not None and value < (0 if name == "num_fewshot" else 1):
                problems.append((name, f"must be {'>= 0' if name == 'num_fewshot' else '>= 1'} or null, got {value}"))
        for name in ("batch_tokens", "batch_size"):
            if getattr(self, name) < 1:
                problems.append((name, f"must be >= 1, got {getattr(self, name)}"))
        if not 0 <= self.seed < 2**64:
            problems.append(("seed", f"must be in [0, 2^64), got {self.seed}"))
        return problems
