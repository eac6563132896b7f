"""A compiled decode step: one new token per row, a fixed-size KV cache, everything static, through inductor.

Why: at batch 1 a decoder is a chain of matrix-vector products, bound by memory bandwidth, plus a few hundred
small elementwise ops. Eager PyTorch loses on both counts on a CPU: MKL's fp32 GEMV reaches a fraction of the
machine's bandwidth on AMD processors, and each eager op costs microseconds of dispatch. Inductor with
`freezing` + `max_autotune` generates its own C++ GEMV micro-kernels, fuses the elementwise ops, and `cpp_wrapper`
calls them from C++ instead of Python. int8 matrices and attention go to fournil's own kernels
(fournil.lm.kernels) when the CPU has them.

The price is a one-time compile (a minute or more) per (batch, cache size), so this backend is opt-in
(`--backend inductor`); long generations amortise it. Shapes are static: the cache length is rounded up
to a power of two (≥ 256), attention reads the whole cache under a mask of the filled positions, and the new
keys/values are written at a position given as a tensor, so one compiled graph serves every step.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from torch import nn

from fournil.lm import kernels
from fournil.lm.backends import Backend, MaskedState, step
from fournil.lm.llama import KVCache, Llama, apply_rope, rope_cos_sin
from fournil.lm.quantized import Int4Linear, Int8Linear

log = logging.getLogger(__name__)

MIN_CACHE = 256
INDUCTOR_OPTIONS = {
    "freezing": True,  # weights become constants: packed for the GEMV kernels, folded where possible
    "max_autotune": True,  # lets inductor's C++ GEMM/GEMV templates compete with (and beat) MKL
    "cpp_wrapper": True,  # the graph's kernel calls are made from C++, not from Python
    "cpp.enable_concat_linear": True,  # q/k/v (and gate/up) sharing an input become one GEMV
    "autotune_num_choices_displayed": 0,
    "max_autotune_report_choices_stats": False,
}


def cache_size(needed: int, limit: int) -> int:
    """The KV-cache length for `needed` positions: a power of two ≥ MIN_CACHE (few distinct compiles), ≤ limit."""
    size = MIN_CACHE
    while size < needed:
        size *= 2
    return max(min(size, limit), needed)


class DecodeStep(nn.Module):
    """model(one token per row) with the KV cache written at `slot`, attention over a (B, S) key mask."""

    def __init__(self, model: Llama):
        super().__init__()
        self.model = model
        # fournil's decode kernels (fournil.lm.kernels, CPU only), else torch ops
        self.kernels = next(model.parameters()).is_cpu and kernels.available()

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor, key_mask: torch.Tensor,
                k_cache: list[torch.Tensor], v_cache: list[torch.Tensor]) -> torch.Tensor:
        """ids/positions (B, 1), slot (1,), key_mask (B, 1, 1, S) bool → float32 logits (B, V)."""
        model, config = self.model, self.model.config
        B = ids.shape[0]
        x = model.model.embed_tokens(ids)
        cos, sin = rope_cos_sin(positions, config.head_dim, config.rope_theta, x.dtype)
        for block, k_all, v_all in zip(model.model.layers, k_cache, v_cache, strict=True):
            attn = block.self_attn
            h = block.input_layernorm(x)
            q, k, v = self._project(h, (attn.q_proj, attn.k_proj, attn.v_proj))
            q = q.view(B, 1, attn.n_heads, attn.head_dim).transpose(1, 2)
            k = k.view(B, 1, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
            v = v.view(B, 1, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            k_all.index_copy_(2, slot, k)
            v_all.index_copy_(2, slot, v)
            if self.kernels:  # reads only the filled positions, and the cache where it lies
                y = kernels.decode_attention(q.reshape(B, attn.n_heads, attn.head_dim), k_all, v_all,
                                             key_mask.view(B, -1), attn.head_dim ** -0.5)
            else:
                # one query per row: plain matmuls + softmax beat the SDPA kernel here (it is built for long
                # queries) and fuse; grouped-query heads share their kv head through the reshape
                groups = attn.n_heads // attn.n_kv_heads
                q = q.reshape(B, attn.n_kv_heads, groups, attn.head_dim)
                scores = (q @ k_all.transpose(2, 3)).float() * attn.head_dim ** -0.5  # (B, K, G, S)
                weights = scores.masked_fill(~key_mask, float("-inf")).softmax(-1).to(x.dtype)
                y = weights @ v_all
            x = x + attn.o_proj(y.reshape(B, 1, attn.n_heads * attn.head_dim))
            mlp = block.mlp
            gate, up = self._project(block.post_attention_layernorm(x), (mlp.gate_proj, mlp.up_proj))
            x = x + mlp.down_proj(F.silu(gate) * up)
        return model.lm_head(model.model.norm(x))[:, -1].float()

    def _project(self, h: torch.Tensor, linears: tuple[nn.Module, ...]) -> list[torch.Tensor]:
        """Several projections of one input; int8 ones in one kernel call (one pass, one thread start)."""
        if self.kernels and all(isinstance(lin, Int8Linear) for lin in linears):
            y = kernels.int8_linear(h, [lin.weight for lin in linears], [lin.weight_scale for lin in linears])
            return list(y.split([lin.weight.shape[0] for lin in linears], dim=-1))
        return [lin(h) for lin in linears]


class CompiledDecoder(Backend):
    """Owns the compiled step of one model; compiles a graph per (batch, cache size) the first time it is met."""

    def __init__(self, model: Llama):
        self.model = model
        step = DecodeStep(model).eval()
        self.graph = torch.compile(step, fullgraph=True)
        self.shapes: set[tuple[int, int]] = set()
        self.options = dict(INDUCTOR_OPTIONS)
        if step.kernels and not any(isinstance(m, (nn.Linear, Int4Linear)) for m in model.modules()):
            # every matrix product is fournil's kernel (threaded on its own); what inductor generates is only
            # elementwise work on a few thousand numbers, where starting threads costs more than it saves, and
            # there is no GEMM template left to autotune
            self.options.update({"cpp.threads": 1, "max_autotune": False})

    name = "inductor"
    prefill_tokens = 16  # a batch-1 prompt this short is cheaper fed to the step token by token than prefilled

    def start(self, ids: torch.Tensor, mask: torch.Tensor, max_len: int) -> MaskedState:
        return MaskedState(self, self.model, ids, mask, cache_size(max_len, self.model.config.max_seq_len))

    def prefill(self, ids: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor,
                cache: KVCache) -> torch.Tensor:
        """A short prompt (1, T), token by token through the step → the float32 logits (1, V) of its last token."""
        for column in range(ids.shape[1]):
            logits = step(self, ids[:, column:column + 1], positions[:, column:column + 1], key_mask, cache)
        return logits

    def step(self, ids: torch.Tensor, positions: torch.Tensor, slot: int, key_mask: torch.Tensor,
             cache: KVCache) -> torch.Tensor:
        shape = (ids.shape[0], cache.max_len)
        # fresh (B, 1) tensors: a slice of a wider one has other strides and offsets, which the guards would
        # tell apart from what was compiled
        dense = torch.contiguous_format
        args = (ids.clone(memory_format=dense), positions.clone(memory_format=dense),
                torch.tensor([slot], device=ids.device), key_mask, cache.k, cache.v)
        if shape in self.shapes:
            # every shape met so far has its graph: skip re-checking guards on each step (a millisecond per token)
            try:
                with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
                    return self.graph(*args)
            except RuntimeError as exc:  # an input the guards tell apart after all: compile for it below
                if "Recompilation" not in str(exc):
                    raise
        start = time.perf_counter()
        log.warning("compiling the decode step for batch %d, cache %d (once per shape; a minute or more)", *shape)
        with torch._inductor.config.patch(self.options):
            logits = self.graph(*args)
        self.shapes.add(shape)
        log.info("compiled in %.0f s", time.perf_counter() - start)
        return logits
