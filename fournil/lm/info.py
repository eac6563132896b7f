"""Size arithmetic for a model config: parameters, FLOPs per token, training memory. No weights are built.

FLOPs follow the PaLM appendix-B convention (Chowdhery et al. 2022): 2 FLOPs per multiply-accumulate, matmul
parameters N (everything but the embedding lookup and norms), attention 2·2·n_layers·seq_len·dim per token
(QKᵀ and AV, no causal halving); training = 3 × forward (backward costs twice the forward).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fournil.lm.config import ModelConfig

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ParamCounts:
    embedding: int
    attention: int
    mlp: int
    norms: int
    lm_head: int  # 0 when tied to the embedding

    @property
    def total(self) -> int:
        return self.embedding + self.attention + self.mlp + self.norms + self.lm_head

    @property
    def matmul(self) -> int:
        """Parameters that cost FLOPs per token: projections, MLP and the output head."""
        return self.attention + self.mlp + (self.lm_head or self.embedding)


def param_counts(config: ModelConfig) -> ParamCounts:
    d, kv = config.dim, config.kv_heads * config.head_dim
    return ParamCounts(
        embedding=config.vocab_size * d,
        attention=config.n_layers * (2 * d * d + 2 * d * kv),  # q, o: d×d; k, v: d×kv
        mlp=config.n_layers * 3 * d * config.ffn_dim,  # gate, up, down
        norms=(2 * config.n_layers + 1) * d,
        lm_head=0 if config.tie_embeddings else config.vocab_size * d,
    )


def flops_per_token(config: ModelConfig, seq_len: int | None = None) -> dict[str, int]:
    seq_len = seq_len or config.max_seq_len
    forward = 2 * param_counts(config).matmul + 4 * config.n_layers * seq_len * config.dim
    return {"forward": forward, "training": 3 * forward}


def activation_elements_per_token(config: ModelConfig, checkpointing: bool = False) -> int:
    """Elements autograd keeps per token for backward, counted from `llama.py`'s forward.

    Per block: two RMSNorms (input and normalised output, 2·dim each), q/k before and after RoPE plus the
    rotated halves, v, the attention output and its reshaped copy for o_proj, and four ffn-sized tensors
    (gate, silu(gate), up, their product). Then the final norm and the float32 log-softmax over the vocab.
    With activation checkpointing only each block's input is kept, plus one block being recomputed.
    """
    d, kv, f = config.dim, config.kv_heads * config.head_dim, config.ffn_dim
    block = 2 * d + 3 * d + 3 * kv + kv + 2 * d + 2 * d + 4 * f
    head = 2 * d + config.vocab_size
    if checkpointing:
        return config.n_layers * d + block + head
    return config.n_layers * block + head


def memory_bytes(config: ModelConfig, batch_size: int, seq_len: int | None = None, dtype: str | None = None,
                 checkpointing: bool = False) -> dict[str, int]:
    """Training memory on one device without sharding: weights, gradients, AdamW state, activations."""
    seq_len = seq_len or config.max_seq_len
    width = BYTES[dtype or config.dtype]
    n = param_counts(config).total
    return {
        "weights": n * width,
        "gradients": n * width,
        "optimizer": n * 8,  # AdamW: exp_avg and exp_avg_sq in float32
        "activations": batch_size * seq_len * activation_elements_per_token(config, checkpointing) * width,
    }


def describe(config: ModelConfig, batch_size: int = 1, seq_len: int | None = None, dtype: str | None = None,
             checkpointing: bool = False) -> dict:
    """Everything `fournil model info` reports, as plain data."""
    seq_len = seq_len or config.max_seq_len
    counts = param_counts(config)
    memory = memory_bytes(config, batch_size, seq_len, dtype, checkpointing)
    return {
        "config": asdict(config),
        "parameters": {**asdict(counts), "total": counts.total, "non_embedding": counts.total - counts.embedding},
        "flops_per_token": flops_per_token(config, seq_len),
        "memory": {
            "batch_size": batch_size,
            "seq_len": seq_len,
            "dtype": dtype or config.dtype,
            "activation_checkpointing": checkpointing,
            "bytes": {**memory, "total": sum(memory.values())},
        },
    }


def human(n: float, unit: str = "") -> str:
    """1_345_000_000 → '1.35 B'; bytes → '2.51 GiB'."""
    if unit == "B":
        for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(n) < 1024 or suffix == "TiB":
                return f"{n:.2f} {suffix}" if suffix != "B" else f"{int(n)} B"
            n /= 1024
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".strip()
