"""The model's shape: a flat, kw-only dataclass with the names the Llama papers use.

Pure data: imports nothing from fournil, so any stage (and `fournil.recipe`) may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class ModelConfig:
    """A Llama decoder. Defaults are CroissantLLM-1.3B (arXiv 2402.00786, Table 2 / the released config.json)."""

    dim: int = 2048  # hidden size (d_model)
    n_layers: int = 24
    n_heads: int = 16
    n_kv_heads: int | None = None  # None → n_heads (multi-head attention; CroissantLLM uses no GQA)
    ffn_dim: int = 5504  # SwiGLU inner size (CroissantLLM: 5504 = 2.6875·dim, a multiple of 64)
    vocab_size: int = 32000
    max_seq_len: int = 2048  # context length; RoPE needs no table, this only bounds KV caches and data
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5  # RMSNorm ε
    tie_embeddings: bool = False  # CroissantLLM keeps input and output embeddings separate
    init_std: float = 0.02  # N(0, σ) for every matrix, as transformers' LlamaPreTrainedModel does
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # dtype weights are saved in

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    def check(self) -> list[tuple[str, str]]:
        """Cross-field rules; each problem names the field to fix."""
        problems = []
        for name in ("dim", "n_layers", "n_heads", "ffn_dim", "vocab_size", "max_seq_len"):
            if getattr(self, name) <= 0:
                problems.append((name, f"must be > 0, got {getattr(self, name)}"))
        if self.n_heads > 0 and self.dim % self.n_heads:
            problems.append(("n_heads", f"dim={self.dim} is not divisible by n_heads={self.n_heads}"))
        elif self.n_heads > 0 and self.head_dim % 2:
            problems.append(("n_heads", f"head_dim={self.head_dim} must be even for RoPE"))
        if self.n_kv_heads is not None and (self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads):
            problems.append(("n_kv_heads", f"must divide n_heads={self.n_heads}, got {self.n_kv_heads}"))
        if self.rope_theta <= 0:
            problems.append(("rope_theta", f"must be > 0, got {self.rope_theta}"))
        if not 0 < self.norm_eps < 1:
            problems.append(("norm_eps", f"must be in (0, 1), got {self.norm_eps}"))
        if self.init_std <= 0:
            problems.append(("init_std", f"must be > 0, got {self.init_std}"))
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                problems.append((name, f"must be in [0, vocab_size={self.vocab_size}), got {value}"))
        return problems
