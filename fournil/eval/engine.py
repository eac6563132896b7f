"""The evaluation engine: lm-eval's requests (log-likelihoods, rolling log-likelihoods, greedy generation) on a
model directory, through fournil's runtime: scores from `fournil.lm.score.Scorer` (batched, packed, prefixes
shared), generation from `fournil.lm.generate`'s decode loop on the chosen backend.

Tokenisation follows lm-eval's `hf` model so that scores agree: texts are encoded with the tokenizer's default
special tokens, trailing context spaces move to the continuation, and a continuation's tokens are the tail of
the encoded (context + continuation), not the continuation encoded alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from fournil.console import UsageError
from fournil.lm.backends import choose
from fournil.lm.generate import Texts, decode_steps
from fournil.lm.hf import resolve
from fournil.lm.llama import Llama
from fournil.lm.prompt import PromptTokenizer
from fournil.lm.quantized import load
from fournil.lm.sampling import SamplingConfig
from fournil.lm.score import Scorer

log = logging.getLogger(__name__)


class Engine:
    """A model directory (fournil or any transformers Llama) ready to score and generate."""

    def __init__(self, model_dir: str | Path, *, device: str | None = None, dtype: str | None = None,
                 batch_tokens: int = 4096, max_length: int | None = None, backend: str = "auto"):
        from transformers import AutoTokenizer

        directory = resolve(model_dir)
        self.directory = directory
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model: Llama = load(directory, dtype, self.device)  # a quantised directory too
        self.backend = choose(self.model, backend)  # generation's decode steps
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(directory))
        except (OSError, ValueError) as exc:
            raise UsageError(f"{directory}: no usable tokenizer files ({exc})") from exc
        config = self.model.config
        if len(self.tokenizer) > config.vocab_size:
            raise UsageError(f"{directory}: the tokenizer has {len(self.tokenizer)} tokens but config.json says "
                             f"vocab_size={config.vocab_size}; they belong to different models")
        eos = self.tokenizer.eos_token_id
        if eos is not None and eos != config.eos_token_id:
            log.warning("%s: tokenizer eos id %s differs from config.json eos_token_id %s", directory, eos,
                        config.eos_token_id)
        self.eos_id = eos if eos is not None else config.eos_token_id
        bos = self.tokenizer.bos_token_id
        self.prefix_id = bos if bos is not None else self.eos_id  # what an empty context is scored after
        self.max_length = max_length or config.max_seq_len
        self.batch_tokens = batch_tokens
        self.name = str(model_dir)
        self._text: PromptTokenizer | None = None  # the runtime's tokenizer, for streamed decoding

    # ---- tokenisation (lm-eval's rules) ----

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        if not context:
            return [self.prefix_id], self.encode(continuation)
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    # ---- log-likelihood ----

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """(sum of log-probabilities, whether greedy decoding gives the continuation) per (context, continuation)."""
        return self._scorer().loglikelihood([self.encode_pair(*r) for r in requests])

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        """Log-likelihood of whole texts in disjoint windows of `max_length` tokens (lm-eval's rolling windows)."""
        return self._scorer().rolling([[self.prefix_id, *self.encode(t)] for t in texts])

    def _scorer(self) -> Scorer:
        return Scorer(self.model, batch_tokens=self.batch_tokens, max_length=self.max_length)

    # ---- generation ----

    @torch.inference_mode()
    def generate(self, contexts: Sequence[str], *, until: Sequence[str] = ("\n",), max_tokens: int = 128,
                 batch_size: int = 16, progress: Callable[[int], None] | None = None,
                 chat: bool = False) -> list[str]:
        """Greedy continuations, cut at the first stop sequence; never more than `max_tokens` tokens.

        With `chat`, each context is a user message rendered with the model's chat template (a fine-tuned chat
        model is asked the way it was trained) and the reply also ends at the end-of-turn token."""
        if max_tokens <= 0:
            raise UsageError(f"max tokens must be positive, got {max_tokens}")
        stop_ids = {self.eos_id}
        if chat:
            encoded = self.chat_prompts(contexts)
            end_of_turn = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
            if isinstance(end_of_turn, int) and end_of_turn != self.tokenizer.unk_token_id:
                stop_ids.add(end_of_turn)
        else:
            encoded = [self.encode(c) for c in contexts]
        encoded = [e[-max(1, self.max_length - max_tokens):] for e in encoded]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        outputs = [""] * len(encoded)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            for i, text in zip(batch, self._generate_batch([encoded[i] for i in batch], until, max_tokens,
                                                           stop_ids), strict=True):
                outputs[i] = text
            if progress:
                progress(len(batch))
        return outputs

    def chat_prompts(self, messages: Sequence[str]) -> list[list[int]]:
        """Token ids of each message as one user turn in the chat template, ready for the assistant's reply."""
        if not self.tokenizer.chat_template:
            raise UsageError(f"{self.directory}: no chat template; evaluate it without chat mode")
        rendered = [self.tokenizer.apply_chat_template([{"role": "user", "content": m}], tokenize=False,
                                                       add_generation_prompt=True) for m in messages]
        return [self.tokenizer.encode(r, add_special_tokens=False) for r in rendered]  # the template has its BOS

    def _generate_batch(self, prompts: list[list[int]], until: Sequence[str], max_tokens: int,
                        stop_ids: set[int]) -> list[str]:
        """The runtime's decode loop (fournil.lm.generate), text decoded incrementally as tokens arrive."""
        if self._text is None:
            self._text = PromptTokenizer.load(self.directory)
        sampling = SamplingConfig(max_tokens=max_tokens, stop=tuple(s for s in until if s))
        texts = Texts(self._text, len(prompts), sampling.stop, frozenset(stop_ids))
        for _ in texts.follow(decode_steps(self.model, prompts, sampling, texts.eos_ids, self._text.pad_id,
                                           self.backend)):
            pass
        # a row that ran out of tokens mid-character ends with what lm-eval's decode gives it (U+FFFD)
        return [cut(d.text if d.stopped else self._text.decode(d.ids), until) for d in texts.decoders]


def cut(text: str, until: Sequence[str]) -> str:
    """The text before the first stop sequence (lm-eval splits on each in turn)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text
