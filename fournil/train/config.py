"""The optimisation recipe: a flat, kw-only dataclass. Pure data, importable by any module.

Defaults are CroissantLLM's (arXiv 2402.00786): AdamW β=(0.9, 0.95), peak lr 3e-4, weight decay 0.1,
gradient clipping 1.0, linear warmup then cosine decay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class TrainConfig:
    lr: float = 3e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # final lr = min_lr_ratio · lr (our choice; the paper does not state it)
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1  # applied to matrices only (not norms)
    grad_clip: float = 1.0  # max global gradient L2 norm; 0 disables
    warmup_steps: int = 1000
    schedule: Literal["cosine", "wsd"] = "cosine"  # wsd = warmup-stable-decay
    decay_fraction: float = 0.2  # wsd only: share of steps spent in the final decay
    steps: int = 190_000  # optimizer steps
    seq_len: int = 2048  # tokens per training sequence
    batch_tokens: int = 15_728_640  # global batch in tokens (7680 × 2048), reached with grad accumulation
    micro_batch_size: int = 4  # sequences per forward/backward on one device
    seed: int = 1234
    parallel: Literal["fsdp", "ddp"] = "fsdp"  # data parallelism when launched by torchrun (FSDP2 shards state)
    precision: Literal["auto", "float32", "bfloat16"] = "auto"  # autocast for matmuls (auto: bf16 on CUDA, fp32 on CPU); weights stay fp32
    compile: bool = False  # torch.compile the model (first step costs 25–40 s on a CPU)
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~30 % more compute
    log_interval: int = 10  # steps between console/JSONL log lines
    eval_interval: int = 200  # steps between per-language validation (bits per byte); 0 = only at the end
    eval_tokens: int = 65536  # validation tokens per language (capped by what the shards hold)
    checkpoint_interval: int = 500  # steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = 2  # keep the newest N complete checkpoints
    loggers: tuple[str, ...] = ()  # extra metric sinks besides metrics.jsonl: "tensorboard", "wandb" (if installed)
    peak_flops: float = 0.0  # per-device peak FLOP/s for MFU; 0 = the GPU's datasheet peak or the CPU's measured one
    replay: float = 0.0  # fine-tuning only: share of examples that are pretraining text (loss on every token)

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_tokens

    def check(self) -> list[tuple[str, str]]:
        problems = []
        for name in ("lr", "steps", "seq_len", "batch_tokens", "micro_batch_size", "log_interval", "eval_tokens",
                     "keep_checkpoints"):
            if getattr(self, name) <= 0:
                problems.append((name, f"must be > 0, got {getattr(self, name)}"))
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(("min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}"))
        if not all(0 <= b < 1 for b in self.betas):
            problems.append(("betas", f"each beta must be in [0, 1), got {list(self.betas)}"))
        for name in ("weight_decay", "grad_clip", "warmup_steps", "eval_interval", "checkpoint_interval", "peak_flops"):
            if getattr(self, name) < 0:
                problems.append((name, f"must be >= 0, got {getattr(self, name)}"))
        if self.seq_len > 0 and self.batch_tokens % self.seq_len:
            problems.append(("batch_tokens", f"{self.batch_tokens} is not a multiple of seq_len={self.seq_len}"))
        unknown = sorted(set(self.loggers) - {"tensorboard", "wandb"})
        if unknown:
            problems.append(("loggers", f"unknown logger(s) {unknown}; choose from: tensorboard, wandb"))
        if not 0 <= self.seed < 2**64:
            problems.append(("seed", f"must be in [0, 2^64), got {self.seed}"))
        if not 0 <= self.replay < 1:
            problems.append(("replay", f"must be in [0, 1), got {self.replay}"))
        if not 0 < self.decay_fraction <= 1:
            problems.append(("decay_fraction", f"must be in (0, 1], got {self.decay_fraction}"))
        sequences = self.batch_tokens // self.seq_len if self.seq_len > 0 else 0
        if sequences and self.micro_batch_size > 0 and sequences % self.micro_batch_size:
            problems.append(("micro_batch_size", f"{self.micro_batch_size} does not divide the global batch of "
                                                 f"{sequences} sequences (batch_tokens / seq_len)"))
        if self.warmup_steps >= self.steps > 0:
            problems.append(("warmup_steps", f"{self.warmup_steps} must be smaller than steps={self.steps}"))
        return problems
