"""A whole decode step as one call into fournil's kernels (`fournil::decode_step`), for int8 and float32 models.

Why: at batch 1 a decode step is ~120 matrix-vector products over the model's weights plus a little elementwise
work. Issued one operator at a time (eager, or inductor's graph with our int8 kernel inside), every product
starts its threads and a cold memory stream, and streams well below the bandwidth one pass over all of them
reaches (benchmarks/RESULTS.md). The fused step keeps its threads for the whole token, each one streaming its
share of every matrix straight into its share of the next, and needs no compile. It applies to models whose block
matrices and lm_head are all int8 (`fournil quantize --bits 8`) or all float32, float32 elsewhere, on an x86 CPU
with AVX2, for up to 32 rows a step; `unfit` says why not for anything else. It is the `fused` DecodeBackend
(fournil.lm.backends), the one `--backend auto` picks where it runs.
"""

from __future__ import annotations

import mmap

import torch
from torch import nn

from fournil.lm import kernels
from fournil.lm.backends import Backend, MaskedState
from fournil.lm.llama import KVCache, Llama, rope_cos_sin
from fournil.lm.quantized import Int8Linear


def unfit(model: Llama, build: bool = True) -> str | None:
    """Why the fused step cannot run the model here, or None when it can: every block matrix and lm_head int8
    (or every one float32), float32 norms and embeddings, on the CPU, widths multiples of 16, the kernels built
    (built now if need be, unless build=False)."""
    matrices = _matrices(model)
    if not (all(isinstance(m, Int8Linear) for m in matrices) or
            all(type(m) is nn.Linear and m.weight.dtype == torch.float32 for m in matrices)):
        return "it runs models whose matrices are all int8 or all float32"
    widths = (model.config.dim, model.config.n_heads * model.config.head_dim, model.config.ffn_dim)
    embed = model.model.embed_tokens.weight
    if embed.dtype != torch.float32 or not embed.is_cpu:
        return "it runs float32 embeddings on the CPU"
    if any(w % 16 for w in widths):
        return f"it needs widths that are multiples of 16, not {widths}"
    if kernels.available(build):
        return None
    return "fournil's CPU kernels did not load (see the log for why)" if build else "fournil's CPU kernels are not built"


# auto builds the kernels (once per machine) only for a model at least this large. A step's gain from the fused
# call grows with the bytes of weights it streams: from here on, a few replies' worth of tokens win back the
# build's wait; below, eager decoding is quick already and a short generation (a bake's eval, a first chat with
# the demo model) would wait for the build longer than it saves.
BUILD_PAYS_BYTES = 64 * 2**20


def pays_to_build(model: Llama) -> bool:
    """Whether building the kernels, where they are not built yet, is worth it for decoding this model."""
    return sum(m.weight.numel() * m.weight.element_size() for m in _matrices(model)) >= BUILD_PAYS_BYTES


def _matrices(model: Llama) -> list[nn.Module]:
    """The linear layers in the order a step reads them: per block q, k, v, o, gate, up, down; then lm_head."""
    out = []
    for block in model.model.layers:
        a, m = block.self_attn, block.mlp
        out += [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
    return [*out, model.lm_head]


HUGE_PAGE = 2 * 1024 * 1024


def move_to_huge_pages(model: Llama, linears: list[nn.Module]) -> None:
    """Give the matrices one copy in anonymous memory backed by 2 MiB pages, in the order a step reads them.

    Why: loaded weights are pages of the mmap'd safetensors file, 4 KiB each, so streaming SmolLM2's 135 MB
    (int8) walks 33,000 pages a token and misses the TLB on each; 2 MiB pages (Linux transparent huge pages,
    asked for with madvise) take that walk away. The modules' weights become views of the copy, so eager
    prefill reads it too and the weights are held once (a tied embedding table follows lm_head). Where the
    system gives no huge pages (another OS, THP off) this is a plain copy."""
    embed = model.model.embed_tokens
    tied = embed.weight is model.lm_head.weight
    dtype = linears[0].weight.dtype
    sizes = [lin.weight.numel() for lin in linears]
    nbytes = sum(sizes) * linears[0].weight.element_size()
    # private anonymous memory (a shared mapping would be shmem, which THP leaves alone), freed with its last view
    region = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        region.madvise(mmap.MADV_HUGEPAGE)
    arena = torch.frombuffer(region, dtype=dtype)
    offset = -arena.data_ptr() % HUGE_PAGE // arena.element_size()  # whole huge pages from the first byte
    for lin, size in zip(linears, sizes, strict=True):
        view = arena[offset:offset + size].view(lin.weight.shape)
        view.copy_(lin.weight)
        lin.weight = nn.Parameter(view, requires_grad=False) if isinstance(lin.weight, nn.Parameter) else view
        offset += size
    if tied:
        embed.weight = model.lm_head.weight


class FusedDecoder(Backend):
    """Called like CompiledDecoder: one new token per row, keys/values written at `slot`, float32 logits back."""

    name = "fused"

    def __init__(self, model: Llama):
        """A model `unfit` finds nothing against."""
        config, self.model = model.config, model
        matrices = _matrices(model)
        self.kind = "int8" if isinstance(matrices[0], Int8Linear) else "float32"
        norms = [n.weight.float().contiguous() for b in model.model.layers
                 for n in (b.input_layernorm, b.post_attention_layernorm)] + [model.model.norm.weight.float()]
        # rotary tables for every position: the same float32 numbers the eager model computes per step
        cos, sin = rope_cos_sin(torch.arange(config.max_seq_len)[None], config.head_dim, config.rope_theta,
                                torch.float32)
        move_to_huge_pages(model, matrices)
        scales = [m.weight_scale.float().contiguous() for m in matrices] if self.kind == "int8" else []
        # the operator's C++ entry: called through torch.ops, an operator that takes a script object walks every
        # argument in Python first (looking for fake ones, which only tracing makes), 60 cache tensors a step here
        self._step = getattr(torch.ops.fournil.decode_step.default, "_op", torch.ops.fournil.decode_step)
        self._token = getattr(torch.ops.fournil.decode_token.default, "_op", torch.ops.fournil.decode_token)
        # the weights, checked once and held on the C++ side: a step then passes only its own few tensors
        self.plan = torch.classes.fournil.DecodePlan(
            norms, [m.weight.detach() for m in matrices], scales,
            model.model.embed_tokens.weight.detach().contiguous(), cos[0, 0].contiguous(), sin[0, 0].contiguous(),
            config.n_heads, config.kv_heads, config.norm_eps)

    # a batch-1 prompt up to this long is prefilled by `prefill`, faster than eager; beyond, the eager prefill's
    # float GEMM wins
    prefill_tokens = kernels.MAX_ROWS

    @staticmethod
    def accepts(batch: int) -> bool:
        return batch <= kernels.MAX_ROWS

    def start(self, ids: torch.Tensor, mask: torch.Tensor, max_len: int) -> MaskedState:
        # any cache length: unlike inductor's graphs, the step is not specialised to one
        return _FusedState(self, self.model, ids, mask, max_len)

    def step(self, ids: torch.Tensor, positions: torch.Tensor, slot: int, key_mask: torch.Tensor,
             cache: KVCache) -> torch.Tensor:
        """ids/positions (B, 1), key_mask (B, 1, 1, S) bool with `slot` set → float32 logits (B, V)."""
        B = ids.shape[0]
        return self._step(self.plan, ids.reshape(B).contiguous(), positions.reshape(B).contiguous(), torch.arange(B),
                          torch.full((B,), slot), key_mask.reshape(B, -1), cache.keys, cache.values, False)

    def token(self, token: int, position: int, slot: int, key_mask: torch.Tensor, cache: KVCache,
              logits: torch.Tensor) -> int:
        """Batch 1's next step, as one call with plain integers: token at `position`, its keys/values at cache column
        `slot` (which key_mask, (1, 1, 1, S) bool, gets set); the float32 logits (1, V) go into `logits` and their
        argmax (the greedy pick) comes back."""
        return self._token(self.plan, token, position, slot, key_mask, cache.keys, cache.values, logits)

    def rows(self, ids: torch.Tensor, positions: torch.Tensor, k: torch.Tensor, v: torch.Tensor
             ) -> torch.Tensor | None:
        """One new token for each of the first n ≤ MAX_ROWS rows of a cache whose rows have lengths of their own (the server's
        slots): row i's token ids[i] at position and cache column positions[i], attending to columns 0..positions[i].
        ids/positions (n,), k/v (layers, slots, Hkv, S, D) → float32 logits (n, V)."""
        n, S = ids.shape[0], k.shape[3]
        if not self.accepts(n):
            return None
        mask = torch.arange(S) <= positions[:, None]
        return self._step(self.plan, ids, positions, torch.arange(n), positions, mask, k, v, False)

    def prefill(self, ids: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor,
                cache: KVCache) -> torch.Tensor:
        """One sequence's prompt, ids/positions (1, T), into the cache after `cache.length` → the float32 logits
        (1, V) of its last token. Up to MAX_ROWS tokens go in one call, which reads the weights once for all of
        them; each attends causally within the prompt.
        key_mask (1, 1, 1, S) gets the prompt's positions set."""
        T, S, start = ids.shape[1], key_mask.shape[-1], cache.length
        columns = torch.arange(S)
        logits = None
        for first in range(0, T, kernels.MAX_ROWS):
            last = min(T, first + kernels.MAX_ROWS)
            slots = torch.arange(start + first, start + last)
            # what was there before, plus this chunk up to each row's own position
            mask = key_mask.reshape(1, S) | ((columns >= start + first) & (columns <= slots[:, None]))
            logits = self._step(
                self.plan, ids[0, first:last].contiguous(), positions[0, first:last].contiguous(),
                torch.zeros(last - first, dtype=torch.long), slots, mask, cache.keys, cache.values, True)
            key_mask[0, 0, 0, start + first:start + last] = True
            cache.length += last - first
        return logits


class _FusedState(MaskedState):
    """Batch 1 steps as one call with plain integers (FusedDecoder.token), which also hands back the greedy pick."""

    def __init__(self, backend: FusedDecoder, model: Llama, ids: torch.Tensor, mask: torch.Tensor, max_len: int):
        super().__init__(backend, model, ids, mask, max_len)
        self.single, self.position = ids.shape[0] == 1, int(self.next_pos[0, 0])
        self.buffer = torch.empty_like(self.logits)

    def advance(self, tokens: list[int]) -> int | None:
        if not self.single:
            return super().advance(tokens)
        picked = self.backend.token(tokens[0], self.position, self.cache.length, self.key_mask, self.cache,
                                    self.buffer)
        self.logits = self.buffer
        self.position += 1
        self.cache.length += 1
        return picked
