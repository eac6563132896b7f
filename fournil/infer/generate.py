"""The generation engine: KV-cache decoding (one prefill over the prompts, then one token per step), sampling,
streaming, and batches of prompts of different lengths (left padding + attention mask).

`decode_steps` is the loop every front end shares (CLI, chat, translate, benchmarks); `Engine` adds text:
prompts in, streamed text out, stop strings. Greedy output equals transformers' `generate(do_sample=False)`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fournil.console import UsageError
from fournil.infer import kernels
from fournil.infer.compiled import CompiledDecoder, cache_size, compiled_decoder
from fournil.infer.config import SamplingConfig
from fournil.infer.fused import FusedDecoder, fused_decoder
from fournil.infer.prompt import PromptTokenizer, StreamDecoder
from fournil.lm.llama import KVCache, Llama

log = logging.getLogger(__name__)


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


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) ids with padding on the left and the (B, P) mask of real tokens."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        if p:
            ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[row, width - len(p):] = 1
    return ids.to(device), mask.to(device)


def decode_steps(
    model: Llama,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingConfig,
    eos_ids: frozenset[int] | set[int] = frozenset(),
    pad_id: int = 0,
    compiled: CompiledDecoder | FusedDecoder | None = None,
) -> Iterator[tuple[list[int], list[bool]]]:
    """Yield (tokens, done) once per step, one entry per prompt. The caller may set `done[i] = True` (a stop
    string) to end row i; the loop ends when every row is done or after `sampling.max_tokens` steps.
    `compiled` runs the decode steps through a fast step, inductor's (fournil.infer.compiled) or the fused one
    (fournil.infer.fused), for batches it accepts; prefill stays eager except for a short batch-1 prompt, which
    the fused step takes in one call and inductor's token by token."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UsageError("every prompt needs at least one token")
    longest = max(len(p) for p in prompts)
    limit = model.config.max_seq_len
    if longest >= limit:
        raise UsageError(f"prompt of {longest} tokens does not fit the context length {limit}")
    steps = min(sampling.max_tokens, limit - longest)
    if steps < sampling.max_tokens:
        log.warning("max_tokens cut to %d by the context length %d", steps, limit)
    if steps == 0:
        return
    done = [False] * len(prompts)
    with torch.inference_mode():
        state = _Decoder(model, prompts, sampling, pad_id, longest + steps, compiled)
    for step in range(steps):
        with torch.inference_mode():
            tokens = state.next_tokens(done)
        yield tokens, done
        if not sampling.ignore_eos:
            done[:] = [d or t in eos_ids for d, t in zip(done, tokens, strict=True)]
        if all(done) or step == steps - 1:
            return
        with torch.inference_mode():
            state.advance(tokens)


class _Decoder:
    """The decoding state of one batch: KV cache, mask, positions, last logits, seen tokens, RNG."""

    def __init__(self, model: Llama, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
                 pad_id: int, max_len: int, compiled: CompiledDecoder | FusedDecoder | None):
        B = len(prompts)
        if compiled is not None and not compiled.accepts(B):
            compiled = None  # a batch wider than the fast step takes: eager steps
        self.model, self.sampling, self.pad_id, self.compiled = model, sampling, pad_id, compiled
        device = self.device = next(model.parameters()).device
        dtype = model.model.embed_tokens.weight.dtype
        ids, mask = left_pad(prompts, pad_id, device)
        self.padded = bool((mask == 0).any())
        self.mask = mask
        if compiled is not None:  # attention under a mask of filled positions
            if not isinstance(compiled, FusedDecoder):  # inductor's static shapes: a bucketed cache
                max_len = cache_size(max_len, model.config.max_seq_len)
            # (the fused step takes any length: a 256-long bucket for 70 positions cost SmolLM2 ~3 ms a generation)
            self.key_mask = torch.zeros((B, 1, 1, max_len), dtype=torch.bool, device=device)
        self.cache = KVCache(model.config, B, max_len, dtype, device)
        self.generator = None
        if not sampling.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(sampling.seed if sampling.seed is not None else secrets.randbits(63))
        self.seen = None
        if sampling.repetition_penalty != 1.0:
            self.seen = torch.zeros((B, model.config.vocab_size), dtype=torch.bool, device=device)
            self.seen.scatter_(1, ids, mask.bool())  # pads scatter False: harmless
        # prefill: positions count real tokens only, so a left-padded row sees the same positions as alone
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        short = compiled is not None and B == 1 and ids.shape[1] <= compiled.prefill_tokens
        if short and hasattr(compiled, "prefill"):  # the fused step: the prompt in one call
            self.logits = compiled.prefill(ids, positions, self.key_mask, self.cache)
        elif short:
            for column in range(ids.shape[1]):  # a short prompt: token by token through the fast step
                self._compiled_step(ids[:, column:column + 1], positions[:, column:column + 1])
        else:
            hidden = model(ids, position_ids=positions, attention_mask=mask if self.padded else None,
                           cache=self.cache, hidden_only=True)
            self.logits = model.lm_head(hidden[:, -1]).float()
            if compiled is not None:
                self.key_mask[:, 0, 0, :ids.shape[1]] = mask.bool()
        self.next_pos = positions[:, -1:] + 1
        # one sequence through the fused step: a step is one call with plain integers (FusedDecoder.token), which
        # also hands back the greedy pick; logits land in one buffer
        self.single = B == 1 and isinstance(compiled, FusedDecoder)
        if self.single:
            self.position = int(self.next_pos)
            self.picked: int | None = None  # the argmax of self.logits, once a token step made them
            self.buffer = torch.empty_like(self.logits)

    def next_tokens(self, done: list[bool]) -> list[int]:
        if self.single and self.picked is not None and self.sampling.greedy and self.seen is None:
            return [self.pad_id if done[0] else self.picked]
        tokens = pick(process_logits(self.logits, self.seen, self.sampling), self.sampling, self.generator)
        return [self.pad_id if d else t for d, t in zip(done, tokens.tolist(), strict=True)]

    def advance(self, tokens: list[int]) -> None:
        """Run the model on one new token per row; keep its logits."""
        B = len(tokens)
        if self.single:
            if self.seen is not None:
                self.seen[0, tokens[0]] = True
            self.picked = self.compiled.token(tokens[0], self.position, self.cache.length, self.key_mask, self.cache,
                                              self.buffer)
            self.logits = self.buffer
            self.position += 1
            self.cache.length += 1
            return
        new = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        if self.seen is not None:
            self.seen.scatter_(1, new, True)
        if self.compiled is not None:
            self._compiled_step(new, self.next_pos)
            self.next_pos = self.next_pos + 1
            return
        if self.padded:
            self.mask = torch.cat((self.mask, self.mask.new_ones((B, 1))), dim=1)
        self.logits = self.model(new, position_ids=self.next_pos, attention_mask=self.mask if self.padded else None,
                                 cache=self.cache)[:, -1].float()
        self.next_pos = self.next_pos + 1

    def _compiled_step(self, new: torch.Tensor, positions: torch.Tensor) -> None:
        slot = self.cache.length
        self.key_mask[:, :, :, slot] = True
        self.logits = self.compiled(new, positions, slot, self.key_mask, self.cache)
        self.cache.length += 1


@dataclass
class Completion:
    """One prompt's result; finish_reason is "stop" (eos or a stop string) or "length" (max_tokens)."""

    text: str
    tokens: list[int]
    prompt_tokens: int
    finish_reason: str


class Engine:
    """A model and its tokenizer: text prompts in, text (streamed or batched) out."""

    def __init__(self, model: Llama, tokenizer: PromptTokenizer, compile: bool = False):
        self.model = model.eval()
        self.tokenizer = tokenizer
        # an all-int8 model decodes through the fused step with or without `compile` (it needs no compile); a
        # float32 one with `compile` too (as fast as inductor's graph, without its compile); others through
        # inductor when asked
        self.compiled = fused_decoder(self.model, floats=compile) or (compiled_decoder(self.model) if compile
                                                                        else None)
        if tokenizer.vocab_size > model.config.vocab_size:
            raise UsageError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only "
                             f"{model.config.vocab_size}: they do not belong together")

    @classmethod
    def load(cls, directory: str | Path, dtype: str | None = None, device: str = "cpu",
             compile: bool = False) -> Engine:
        """A model directory (fournil, transformers, imported GGUF, or quantised by `fournil quantize`).

        compile: decode fast. On a CPU with fournil's kernels (fournil.infer.kernels) a float32 model then
        decodes through the fused step (fournil.infer.fused), an int8 one does so either way; other models go
        through inductor (fournil.infer.compiled). Without the kernels an int8 model then computes in bfloat16,
        the input type of inductor's int8 weight-only kernels, unless `dtype` says otherwise."""
        from fournil.infer.quantize import is_quantized, load_quantized
        from fournil.lm.hf import load_model

        directory = Path(directory)
        if is_quantized(directory):
            model = load_quantized(directory, device)
            if dtype is not None or (compile and not kernels.available()):
                model = model.to(getattr(torch, dtype or "bfloat16"))  # float weights only; int8 stays
        else:
            model = load_model(directory, dtype=dtype, device=device)
        return cls(model, PromptTokenizer.load(directory), compile=compile)

    def encode(self, prompt: str | Sequence[int], chat: bool = False) -> list[int]:
        if not isinstance(prompt, str):
            return list(prompt)
        if chat:
            return self.tokenizer.chat([{"role": "user", "content": prompt}])
        return self.tokenizer.encode(prompt)

    def stream(self, prompt: str | Sequence[int], sampling: SamplingConfig, chat: bool = False) -> Iterator[str]:
        """Text deltas as tokens arrive; never prints a stop string or a half UTF-8 character."""
        ids = self.encode(prompt, chat)
        decoder = StreamDecoder(self.tokenizer, sampling.stop)
        for tokens, done in decode_steps(self.model, [ids], sampling, self._eos(sampling), self.tokenizer.pad_id,
                                         self.compiled):
            token = tokens[0]
            if token in self.tokenizer.eos_ids and not sampling.ignore_eos:
                break
            if delta := decoder.push(token):
                yield delta
            if decoder.stopped:
                done[0] = True
                return
        if rest := decoder.flush():
            yield rest

    def complete(self, prompts: Sequence[str | Sequence[int]], sampling: SamplingConfig,
                 chat: bool = False) -> list[Completion]:
        """Batched generation: all prompts in one left-padded batch."""
        encoded = [self.encode(p, chat) for p in prompts]
        decoders = [StreamDecoder(self.tokenizer, sampling.stop) for _ in encoded]
        reasons = ["length"] * len(encoded)
        finished = [False] * len(encoded)
        for tokens, done in decode_steps(self.model, encoded, sampling, self._eos(sampling), self.tokenizer.pad_id,
                                         self.compiled):
            for row, token in enumerate(tokens):
                if finished[row]:
                    continue
                if token in self.tokenizer.eos_ids and not sampling.ignore_eos:
                    finished[row], reasons[row] = True, "stop"
                    continue
                decoders[row].push(token)
                if decoders[row].stopped:
                    finished[row], reasons[row] = True, "stop"
                    done[row] = True
        return [Completion(d.text, list(d.ids), len(e), r)
                for d, e, r in zip(decoders, encoded, reasons, strict=True)]

    def _eos(self, sampling: SamplingConfig) -> frozenset[int]:
        return frozenset() if sampling.ignore_eos else self.tokenizer.eos_ids
