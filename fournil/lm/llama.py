"""The Llama decoder, in one file, with transformers' `LlamaForCausalLM` parameter names and layouts.

Architecture (Touvron et al. 2023; CroissantLLM uses it unchanged):
- pre-norm residual blocks: x = x + attn(rmsnorm(x)); x = x + mlp(rmsnorm(x))
- RMSNorm (computed in float32, cast back), no biases anywhere
- rotary position embeddings in the "rotate half" layout transformers uses (q/k weights are stored permuted
  relative to Meta's original checkpoints, so HF weights load as they are)
- causal self-attention through `scaled_dot_product_attention`, optional grouped-query attention
- SwiGLU MLP: down(silu(gate(x)) * up(x))
- optional KV cache for incremental decoding (prefill, then one token at a time)

Module names mirror transformers (`model.layers.0.self_attn.q_proj.weight`, `lm_head.weight`, …) so that
`state_dict()` is exactly a HF checkpoint: no key mapping anywhere.
Shapes in comments: B batch, T new tokens, S key length (cache + new), H heads, K kv heads, D head dim.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fournil.lm.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 statistics even under bf16, then the weight in the input dtype, as transformers does;
        # F.rms_norm is one fused kernel (forward and backward) instead of five elementwise ones
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for integer positions (B, T) → (B, 1, T, D), computed in float32."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.float()[..., None] * inv_freq  # (B, T, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (B, T, D): the "rotate half" layout
    return angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+D/2}) by their position's angle."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class KVStore(Protocol):
    """Where attention keeps keys and values between forward passes. `update` receives a layer's new (B, K, T, D)
    keys/values and returns every key/value those tokens attend to (B, K, S, D); `length` counts the tokens
    stored before this pass, which places new tokens when the caller gives no positions, and the forward pass
    adds T to it afterwards."""

    length: int

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class KVCache:
    """Pre-allocated keys/values for every layer; `length` tokens are filled (same for the whole batch).

    Padding in batched prompts is handled with an attention mask, not by per-row lengths.
    """

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int, dtype: torch.dtype, device=None):
        shape = (config.n_layers, batch_size, config.kv_heads, max_len, config.head_dim)
        # every layer's in one tensor (a fused decode step takes the two whole); k[layer], v[layer] are views
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.k, self.v = list(self.keys.unbind(0)), list(self.values.unbind(0))
        self.length = 0
        self.max_len = max_len

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (B, K, T, D) keys/values after the filled part; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} tokens > max_len={self.max_len}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.kv_heads, config.head_dim
        self.q_proj = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)

    def forward(self, x, cos, sin, mask: torch.Tensor | None, cache: KVStore | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, K, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, K, S, D)
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=mask,
            is_causal=mask is None and T > 1,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.up_proj = nn.Linear(config.dim, config.ffn_dim, bias=False)
        self.down_proj = nn.Linear(config.ffn_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """The body (`model.*` in HF checkpoints): embeddings, blocks, final norm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)


class Llama(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, init_std) for matrices and embeddings, ones for norms (transformers' Llama init)."""
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)

    def forward(self, input_ids: torch.Tensor, *, position_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, cache: KVStore | None = None,
                hidden_only: bool = False) -> torch.Tensor:
        """Logits (B, T, V) for token ids (B, T); float32 logits are left to the caller's dtype.

        attention_mask: optional (B, S) with 1 for real tokens and 0 for padding over all S key positions
        (cached + new), as in transformers; or a boolean (B, 1, T, S) saying which key each new token attends
        to, used as it is (packed rows, shared prefixes, slots of different lengths). With a cache, new tokens get
        positions after `cache.length` unless `position_ids` says otherwise. hidden_only returns the final-norm
        hidden states (B, T, dim), which lets a caller compute the loss in chunks without materialising all
        logits.
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        x = self.model.embed_tokens(input_ids)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta, x.dtype)
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = attention_mask.bool()
        else:
            mask = _attention_mask(attention_mask, B, T, past, x.device)
        for block in self.model.layers:
            x = block(x, cos, sin, mask, cache)
        if cache is not None:
            cache.length += T
        x = self.model.norm(x)
        return x if hidden_only else self.lm_head(x)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (tied weights counted once)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.model.embed_tokens.weight.numel() if exclude_embeddings else n


def _attention_mask(padding: torch.Tensor | None, B: int, T: int, past: int, device) -> torch.Tensor | None:
    """A boolean (B, 1, T, S) mask (True = attend), or None when plain causal attention suffices."""
    S = past + T
    if padding is None and (past == 0 or T == 1):
        return None  # no padding: is_causal for prefill, attend-to-all for one decoded token
    causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=past)
    mask = causal[None, None].expand(B, 1, T, S)
    if padding is not None:
        mask = mask & padding[:, None, None, :S].bool()
        # a fully padded query row (left padding) would give NaN; let it attend to itself
        query_pos = torch.arange(past, S, device=device)[:, None]
        mask = mask | (torch.arange(S, device=device)[None] == query_pos)[None, None]
    return mask

