"""The generation engine: KV-cache decoding (one prefill over the prompts, then one token per step), sampling,
streaming, and batches of prompts of different lengths (left padding + attention mask).

`decode_steps` is the loop every front end shares (CLI, chat, translate, evaluation, benchmarks), over any
DecodeBackend (fournil.lm.backends); `Engine` adds text: prompts in, streamed text out, stop strings. Greedy
output through the eager backend equals transformers' `generate(do_sample=False)`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fournil.console import UsageError
from fournil.lm.backends import DecodeBackend, Eager, choose
from fournil.lm.llama import Llama
from fournil.lm.prompt import PromptTokenizer, StreamDecoder
from fournil.lm.quantized import load
from fournil.lm.sampling import SamplingConfig, pick, process_logits

log = logging.getLogger(__name__)


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


def decode_steps(model: Llama, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
                 eos_ids: frozenset[int] | set[int] = frozenset(), pad_id: int = 0,
                 backend: DecodeBackend | None = None) -> Iterator[tuple[list[int], list[bool]]]:
    """Yield (tokens, done) once per step, one entry per prompt. The caller may set `done[i] = True` (a stop
    string) to end row i; the loop ends when every row is done or after `sampling.max_tokens` steps.
    `backend` runs the steps (fournil.lm.backends; eager when None or when it does not take this batch)."""
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
    if backend is None or not backend.accepts(len(prompts)):
        backend = Eager(model)
    done = [False] * len(prompts)
    device = next(model.parameters()).device
    with torch.inference_mode():
        ids, mask = left_pad(prompts, pad_id, device)
        state = backend.start(ids, mask, longest + steps)
        sampler = _Sampler(model, ids, mask, sampling)
    picked = None  # the greedy pick a fused batch-1 step hands back with its logits
    for step in range(steps):
        with torch.inference_mode():
            tokens = sampler.next_tokens(state.logits, picked, done, pad_id)
        yield tokens, done
        if not sampling.ignore_eos:
            done[:] = [d or t in eos_ids for d, t in zip(done, tokens, strict=True)]
        if all(done) or step == steps - 1:
            return
        with torch.inference_mode():
            sampler.saw(tokens)
            picked = state.advance(tokens)


class _Sampler:
    """A batch's sampling state: the seen tokens (repetition penalty) and the RNG."""

    def __init__(self, model: Llama, ids: torch.Tensor, mask: torch.Tensor, sampling: SamplingConfig):
        self.sampling = sampling
        self.generator = None
        if not sampling.greedy:
            self.generator = torch.Generator(device=ids.device)
            self.generator.manual_seed(sampling.seed if sampling.seed is not None else secrets.randbits(63))
        self.seen = None
        if sampling.repetition_penalty != 1.0:
            self.seen = torch.zeros((ids.shape[0], model.config.vocab_size), dtype=torch.bool, device=ids.device)
            self.seen.scatter_(1, ids, mask.bool())  # pads scatter False: harmless

    def next_tokens(self, logits: torch.Tensor, picked: int | None, done: list[bool], pad_id: int) -> list[int]:
        if picked is not None and self.sampling.greedy and self.seen is None:
            return [pad_id if done[0] else picked]
        tokens = pick(process_logits(logits, self.seen, self.sampling), self.sampling, self.generator)
        return [pad_id if d else t for d, t in zip(done, tokens.tolist(), strict=True)]

    def saw(self, tokens: list[int]) -> None:
        if self.seen is not None:
            self.seen.scatter_(1, torch.tensor(tokens, device=self.seen.device)[:, None], True)


class Texts:
    """The text of each row of `decode_steps`, decoded incrementally (one StreamDecoder a row); a row ends at one
    of `eos_ids` or at a stop string, with finish reason "stop", else "length"."""

    def __init__(self, tokenizer: PromptTokenizer, rows: int, stop: Sequence[str], eos_ids: frozenset[int]):
        self.decoders = [StreamDecoder(tokenizer, stop) for _ in range(rows)]
        self.reasons = ["length"] * rows
        self.eos_ids = eos_ids

    def follow(self, steps: Iterator[tuple[list[int], list[bool]]]) -> Iterator[tuple[int, str]]:
        """(row, printable text) as the steps come; a stop string ends its row's decoding."""
        ended = [False] * len(self.decoders)
        for tokens, done in steps:
            for row, token in enumerate(tokens):
                if ended[row]:
                    continue
                if token in self.eos_ids:
                    ended[row], self.reasons[row] = True, "stop"
                    continue
                delta = self.decoders[row].push(token)
                if self.decoders[row].stopped:
                    ended[row] = done[row] = True
                    self.reasons[row] = "stop"
                if delta:
                    yield row, delta


@dataclass
class Completion:
    """One prompt's result; finish_reason is "stop" (eos or a stop string) or "length" (max_tokens)."""

    text: str
    tokens: list[int]
    prompt_tokens: int
    finish_reason: str


class Engine:
    """A model and its tokenizer: text prompts in, text (streamed or batched) out."""

    def __init__(self, model: Llama, tokenizer: PromptTokenizer, backend: str = "auto"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.backend = choose(self.model, backend)
        if tokenizer.vocab_size > model.config.vocab_size:
            raise UsageError(f"tokenizer has {tokenizer.vocab_size} tokens but the model only "
                             f"{model.config.vocab_size}: they do not belong together")

    @classmethod
    def load(cls, directory: str | Path, dtype: str | None = None, device: str = "cpu",
             backend: str = "auto") -> Engine:
        """A model directory (fournil, transformers, imported GGUF, or quantised by `fournil quantize`), decoding
        through `backend` (fournil.lm.backends.choose)."""
        return cls(load(directory, dtype, device), PromptTokenizer.load(directory), backend)

    def encode(self, prompt: str | Sequence[int], chat: bool = False) -> list[int]:
        if not isinstance(prompt, str):
            return list(prompt)
        if chat:
            return self.tokenizer.chat([{"role": "user", "content": prompt}])
        return self.tokenizer.encode(prompt)

    def stream(self, prompt: str | Sequence[int], sampling: SamplingConfig, chat: bool = False) -> Iterator[str]:
        """Text deltas as tokens arrive; never prints a stop string or a half UTF-8 character."""
        ids = self.encode(prompt, chat)
        texts = Texts(self.tokenizer, 1, sampling.stop, self._eos(sampling))
        for _, delta in texts.follow(decode_steps(self.model, [ids], sampling, texts.eos_ids, self.tokenizer.pad_id,
                                                  self.backend)):
            yield delta
        if rest := texts.decoders[0].flush():
            yield rest

    def complete(self, prompts: Sequence[str | Sequence[int]], sampling: SamplingConfig,
                 chat: bool = False) -> list[Completion]:
        """Batched generation: all prompts in one left-padded batch."""
        encoded = [self.encode(p, chat) for p in prompts]
        texts = Texts(self.tokenizer, len(encoded), sampling.stop, self._eos(sampling))
        for _ in texts.follow(decode_steps(self.model, encoded, sampling, texts.eos_ids, self.tokenizer.pad_id,
                                           self.backend)):
            pass
        return [Completion(d.text, list(d.ids), len(e), r)
                for d, e, r in zip(texts.decoders, encoded, texts.reasons, strict=True)]

    def _eos(self, sampling: SamplingConfig) -> frozenset[int]:
        return frozenset() if sampling.ignore_eos else self.tokenizer.eos_ids
