"""The whole decode step of an int8 model as one call into fournil's kernels (`fournil::int8_decode_step`).

Why: at batch 1 an int8 decode step is ~120 matrix-vector products over the model's weights plus a little
elementwise work. Issued one operator at a time (eager, or inductor's graph with our int8 kernel inside), every
product starts its threads and a cold memory stream: on SmolLM2-135M those products reached 18-19 GB/s where one
pass over all of them reaches 26. The fused step keeps its threads for the whole token, each one streaming its
share of every matrix straight into its share of the next, and needs no compile. It applies to models whose
block matrices and lm_head are all int8 (`fournil quantize --bits 8`), float32 elsewhere, on an x86 CPU with
AVX2, for up to 32 rows a step; `fused_decoder` returns None for anything else.
"""

from __future__ import annotations

import torch
from torch import nn

from fournil.infer import kernels
from fournil.infer.quantize import Int8Linear
from fournil.model.llama import KVCache, Llama, rope_cos_sin


def eligible(model: Llama) -> bool:
    """Every block matrix and lm_head int8, float32 norms and embeddings, on the CPU, with the kernels built."""
    layers = model.model.layers
    matrices = [m for b in layers for m in (*_attention(b), *_mlp(b))] + [model.lm_head]
    widths = (model.config.dim, model.config.n_heads * model.config.head_dim, model.config.ffn_dim)
    return (all(isinstance(m, Int8Linear) for m in matrices)
            and model.model.embed_tokens.weight.dtype == torch.float32
            and model.model.embed_tokens.weight.is_cpu
            and all(w % 16 == 0 for w in widths)
            and kernels.available())


def _attention(block: nn.Module) -> tuple[nn.Module, ...]:
    a = block.self_attn
    return a.q_proj, a.k_proj, a.v_proj, a.o_proj


def _mlp(block: nn.Module) -> tuple[nn.Module, ...]:
    m = block.mlp
    return m.gate_proj, m.up_proj, m.down_proj


class FusedInt8Decoder:
    """Called like CompiledDecoder: one new token per row, keys/values written at `slot`, float32 logits back."""

    def __init__(self, model: Llama):
        config = model.config
        matrices = [m for b in model.model.layers for m in (*_attention(b), *_mlp(b))] + [model.lm_head]
        norms = [n.weight.float().contiguous() for b in model.model.layers
                 for n in (b.input_layernorm, b.post_attention_layernorm)] + [model.model.norm.weight.float()]
        # rotary tables for every position: the same float32 numbers the eager model computes per step
        cos, sin = rope_cos_sin(torch.arange(config.max_seq_len)[None], config.head_dim, config.rope_theta,
                                torch.float32)
        # the weights, checked once and held on the C++ side: a step then passes only its own few tensors
        self.plan = torch.classes.fournil.Int8Plan(
            norms, [m.weight.contiguous() for m in matrices], [m.weight_scale.float().contiguous() for m in matrices],
            model.model.embed_tokens.weight.contiguous(), cos[0, 0].contiguous(), sin[0, 0].contiguous(),
            config.n_heads, config.kv_heads, config.norm_eps)

    @staticmethod
    def accepts(batch: int) -> bool:
        return batch <= kernels.MAX_ROWS

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, slot: int, key_mask: torch.Tensor,
                 cache: KVCache) -> torch.Tensor:
        """ids/positions (B, 1), key_mask (B, 1, 1, S) bool with `slot` set → float32 logits (B, V)."""
        B = ids.shape[0]
        return torch.ops.fournil.int8_decode_step(self.plan, ids.reshape(B).contiguous(),
                                                  positions.reshape(B).contiguous(), slot, key_mask.reshape(B, -1),
                                                  cache.k, cache.v)


def fused_decoder(model: Llama) -> FusedInt8Decoder | None:
    """The model's FusedInt8Decoder (kept on the model), or None when the model or machine does not qualify."""
    decoder = getattr(model, "_fournil_fused", None)
    if decoder is None and eligible(model):
        decoder = FusedInt8Decoder(model)
        object.__setattr__(model, "_fournil_fused", decoder)  # not a submodule: keep state_dict() unchanged
    return decoder
