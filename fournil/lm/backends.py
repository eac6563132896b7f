"""Decode backends: how one batch's steps run, after the prompt, one new token per row.

Three implement `DecodeBackend`: `Eager` (Llama.forward over a KVCache, the reference whose greedy tokens equal
transformers'), the fused C++ step (fournil.lm.fused: int8 or float32 models on an x86 CPU with AVX2, once its
kernels are built) and inductor's compiled step (fournil.lm.inductor: any dtype, after a one-time compile per
shape). `choose` picks one by name; `auto` is the fused step where it runs, building fournil's kernels first (once
per machine) only for a model large enough to win that time back, else eager. The decode loop (fournil.lm.generate) and the server only
call the protocol.
"""

from __future__ import annotations

import os
import shutil
from typing import Protocol

import torch

from fournil.console import UsageError
from fournil.lm.llama import KVCache, Llama

BACKENDS = ("auto", "eager", "fused", "inductor")


class DecodeState(Protocol):
    """One batch being decoded: the cache, positions and `logits` (B, V) float32 of each row's last token."""

    logits: torch.Tensor

    def advance(self, tokens: list[int]) -> int | None:
        """Run one new token per row into the cache and `logits`; for batch 1 the new logits' argmax when the
        step computed it anyway, else None."""


class DecodeBackend(Protocol):
    name: str

    def accepts(self, batch: int) -> bool:
        """Whether `start` takes a batch this wide (the decode loop goes eager otherwise)."""

    def start(self, ids: torch.Tensor, mask: torch.Tensor, max_len: int) -> DecodeState:
        """Prefill left-padded prompts ids (B, P) with mask (B, P) of real tokens into a cache of max_len."""

    def rows(self, ids: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor,
             values: torch.Tensor) -> torch.Tensor | None:
        """One token per row of a cache whose rows have their own lengths (the server's slots); None when this
        backend leaves that to the eager forward."""


def positions_of(mask: torch.Tensor) -> torch.Tensor:
    """Positions counting real tokens only, so a left-padded row sees the same positions as alone."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def new_cache(model: Llama, batch: int, max_len: int) -> KVCache:
    weight = model.model.embed_tokens.weight
    return KVCache(model.config, batch, max_len, weight.dtype, weight.device)


def prefill(model: Llama, ids: torch.Tensor, mask: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Float32 logits (B, V) of each row's last prompt token, the prompts' keys/values in `cache`."""
    padded = not bool(mask.all())
    hidden = model(ids, position_ids=positions_of(mask), attention_mask=mask if padded else None, cache=cache,
                   hidden_only=True)
    return model.lm_head(hidden[:, -1]).float()


class Backend:
    """What a backend does unless it says otherwise: any batch, no slot rows."""

    @staticmethod
    def accepts(batch: int) -> bool:
        return True

    @staticmethod
    def rows(ids, positions, keys, values) -> None:
        return None


class Eager(Backend):
    name = "eager"

    def __init__(self, model: Llama):
        self.model = model

    def start(self, ids: torch.Tensor, mask: torch.Tensor, max_len: int) -> DecodeState:
        return _EagerState(self.model, ids, mask, max_len)


def kept(model: Llama, make) -> Backend:
    """The backend `make(model)` of this kind made once and kept on the model (a compiled graph or the fused step's
    weights live as long as it does); not a submodule, so state_dict() is unchanged."""
    attr = f"_fournil_{make.__name__}"
    backend = getattr(model, attr, None)
    if backend is None:
        backend = make(model)
        object.__setattr__(model, attr, backend)
    return backend


class _EagerState:
    def __init__(self, model: Llama, ids: torch.Tensor, mask: torch.Tensor, max_len: int):
        self.model, self.cache = model, new_cache(model, ids.shape[0], max_len)
        self.logits = prefill(model, ids, mask, self.cache)
        self.mask = None if bool(mask.all()) else mask  # no mask at all where no row is padded
        self.next_pos = positions_of(mask)[:, -1:] + 1

    def advance(self, tokens: list[int]) -> None:
        new = torch.tensor(tokens, dtype=torch.long, device=self.next_pos.device)[:, None]
        if self.mask is not None:
            self.mask = torch.cat((self.mask, self.mask.new_ones((len(tokens), 1))), dim=1)
        self.logits = self.model(new, position_ids=self.next_pos, attention_mask=self.mask,
                                 cache=self.cache)[:, -1].float()
        self.next_pos = self.next_pos + 1


class MaskedState:
    """Steps of a backend whose `step` attends over the whole cache under a (B, 1, 1, S) mask of filled columns
    (the fused and inductor steps). A short batch-1 prompt goes through the backend's own `prefill`; others
    through the eager one."""

    def __init__(self, backend, model: Llama, ids: torch.Tensor, mask: torch.Tensor, max_len: int):
        B = ids.shape[0]
        self.backend, self.cache = backend, new_cache(model, B, max_len)
        self.key_mask = torch.zeros((B, 1, 1, max_len), dtype=torch.bool, device=ids.device)
        positions = positions_of(mask)
        if B == 1 and ids.shape[1] <= backend.prefill_tokens:
            self.logits = backend.prefill(ids, positions, self.key_mask, self.cache)
        else:
            self.logits = prefill(model, ids, mask, self.cache)
            self.key_mask[:, 0, 0, :ids.shape[1]] = mask.bool()
        self.next_pos = positions[:, -1:] + 1

    def advance(self, tokens: list[int]) -> None:
        new = torch.tensor(tokens, dtype=torch.long, device=self.next_pos.device)[:, None]
        self.logits = step(self.backend, new, self.next_pos, self.key_mask, self.cache)
        self.next_pos = self.next_pos + 1


def step(backend, ids: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor,
         cache: KVCache) -> torch.Tensor:
    """One token per row through `backend.step` at the cache's next column, which the mask then covers."""
    slot = cache.length
    key_mask[:, :, :, slot] = True
    logits = backend.step(ids, positions, slot, key_mask, cache)
    cache.length += 1
    return logits


def choose(model: Llama, name: str = "auto") -> DecodeBackend:
    """The backend `--backend NAME` asks for; a UsageError naming the option when it cannot run this model here."""
    from fournil.lm import fused

    if name not in BACKENDS:
        raise UsageError(f"--backend {name!r}: choose one of {', '.join(BACKENDS)}")
    if name == "eager":
        return Eager(model)
    if name == "inductor":
        device = next(model.parameters()).device
        if device.type == "cpu" and not shutil.which(os.environ.get("CXX", "c++")):
            raise UsageError("--backend inductor: torch.compile needs a C++ compiler on a CPU and none was found "
                             "(set CXX, or choose --backend eager)")
        from fournil.lm.inductor import CompiledDecoder

        return kept(model, CompiledDecoder)
    # auto never waits for a compile that costs more than it saves: it builds the kernels only for a large model
    why = fused.unfit(model, build=name == "fused" or fused.pays_to_build(model))
    if why is None:
        return kept(model, fused.FusedDecoder)
    if name == "fused":
        raise UsageError(f"--backend fused: {why} (choose --backend auto, eager or inductor)")
    return Eager(model)
