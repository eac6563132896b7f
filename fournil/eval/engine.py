"""The scoring engine: batched log-likelihoods and greedy generation through fournil's Llama.

Log-likelihood requests that share a context (the choices of one multiple-choice question, a few-shot prompt
scored against several endings) run the context once: it is prefilled into a KV cache (plain causal attention),
then all its continuations follow in one row, each attending to the cached context and to itself only, with
positions restarting after the context. That is exactly the computation of separate rows, done once per context
instead of once per choice. Groups are sorted by length and batched under a token budget so padding stays
small, and only the positions that score a continuation go through the vocabulary projection.

Tokenisation follows lm-eval's `hf` model so that scores agree: texts are encoded with the tokenizer's default
special tokens, trailing context spaces move to the continuation, and a continuation's tokens are the tail of
the encoded (context + continuation), not the continuation encoded alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fournil.console import UsageError
from fournil.model.hf import load_model, resolve
from fournil.model.llama import KVCache, Llama, rope_cos_sin

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    """One context scored against several continuations (token ids, context never empty)."""

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]


class Engine:
    """A model directory (fournil or any transformers Llama) ready to score and generate."""

    def __init__(self, model_dir: str | Path, *, device: str | None = None, dtype: str | None = None,
                 batch_tokens: int = 4096, max_length: int | None = None):
        from transformers import AutoTokenizer

        directory = resolve(model_dir)
        self.directory = directory
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model: Llama = load_model(directory, dtype=dtype, device=self.device).eval()
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

    def loglikelihood(self, requests: Sequence[tuple[str, str]],
                      progress: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
        """(sum of log-probabilities, whether greedy decoding gives the continuation) per (context, continuation)."""
        groups: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
        keys = []
        for context, continuation in requests:
            ctx, cont = self.encode_pair(context, continuation)
            key = tuple(ctx)
            groups.setdefault(key, [])
            if tuple(cont) not in groups[key]:
                groups[key].append(tuple(cont))
            keys.append((key, tuple(cont)))
        scored = self.score_groups([Group(k, tuple(v)) for k, v in groups.items()], progress)
        return [scored[k] for k in keys]

    def loglikelihood_rolling(self, texts: Sequence[str],
                              progress: Callable[[int], None] | None = None) -> list[float]:
        """Log-likelihood of whole texts in disjoint windows of `max_length` tokens (lm-eval's rolling windows)."""
        groups, owners = [], []
        for i, text in enumerate(texts):
            tokens = self.encode(text)
            for start in range(0, len(tokens), self.max_length):
                block = tokens[start:start + self.max_length]
                previous = tokens[start - 1] if start else self.prefix_id
                groups.append(Group((previous,), (tuple(block),)))
                owners.append(i)
        scored = self.score_groups(groups, progress)
        totals = [0.0] * len(texts)
        for owner, group in zip(owners, groups, strict=True):
            totals[owner] += scored[(group.context, group.continuations[0])][0]
        return totals

    @torch.inference_mode()
    def score_groups(self, groups: Sequence[Group], progress: Callable[[int], None] | None = None
                     ) -> dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[float, bool]]:
        """Score every (context, continuation) of every group, many groups per forward pass."""
        groups = [self._truncate(g) for g in groups]
        width = [len(g.context) + max((len(c) for c in g.continuations), default=0) for g in groups]
        order = sorted(range(len(groups)), key=lambda i: -width[i])
        results: dict = {}
        start = 0
        while start < len(order):
            batch = order[start:start + max(1, self.batch_tokens // max(width[order[start]], 1))]
            self._score_batch([groups[i] for i in batch], results)
            start += len(batch)
            if progress:
                progress(sum(len(groups[i].continuations) for i in batch))
        return results

    def _truncate(self, group: Group) -> Group:
        """lm-eval's left truncation: context + longest continuation fit in max_length + 1 tokens."""
        longest = max((len(c) for c in group.continuations), default=0)
        return Group(group.context[-max(1, self.max_length + 1 - longest):], group.continuations)

    def _score_batch(self, groups: Sequence[Group], results: dict) -> None:
        """Contexts once into a KV cache (causal, right-padded), then each group's continuations packed in one row
        after it; only positions that predict a continuation token reach the output projection."""
        config, device = self.model.config, self.device
        dtype = next(self.model.parameters()).dtype
        lengths = [len(g.context) for g in groups]
        B, C = len(groups), max(lengths)
        ids = torch.zeros(B, C, dtype=torch.long)
        for b, g in enumerate(groups):
            ids[b, :len(g.context)] = torch.tensor(g.context)
        cache = KVCache(config, B, C + max(sum(len(c) - 1 for c in g.continuations if c) for g in groups), dtype,
                        device)
        # right padding: real tokens never see the pads after them, so plain causal attention is exact
        hidden = self.model(ids.to(device), cache=cache, hidden_only=True)
        last = hidden[torch.arange(B, device=device), torch.tensor(lengths, device=device) - 1]  # (B, dim)
        # every continuation of a group in one row after its context's cache: a continuation sees the context and
        # itself only, its positions restart after the context (segment ids: j for continuation j, -1 padding)
        bodies = [[list(c[:-1]) for c in g.continuations] for g in groups]  # a last token is never an input
        T = max(sum(len(x) for x in body) for body in bodies)
        body_hidden = None
        if T:
            cont_ids = torch.zeros(B, T, dtype=torch.long)
            positions = torch.zeros(B, T, dtype=torch.long)
            segment = torch.full((B, T), -1, dtype=torch.long)
            for b, body in enumerate(bodies):
                offset = 0
                for j, tokens in enumerate(body):
                    cont_ids[b, offset:offset + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
                    positions[b, offset:offset + len(tokens)] = torch.arange(lengths[b], lengths[b] + len(tokens))
                    segment[b, offset:offset + len(tokens)] = j
                    offset += len(tokens)
            segment = segment.to(device)
            sees_context = torch.arange(C, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
            causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
            own = (segment[:, :, None] == segment[:, None, :]) & causal & (segment[:, None, :] >= 0)
            own = own | torch.eye(T, dtype=torch.bool, device=device)  # padding attends to itself: no NaN
            mask = torch.cat([sees_context[:, None, :].expand(B, T, C), own], dim=-1)[:, None]  # (B, 1, T, C+T)
            body_hidden = self._decode(cont_ids.to(device), positions.to(device), mask, cache)
        states, targets, owners = [], [], []
        for b, g in enumerate(groups):
            offset = 0
            for cont in g.continuations:
                if not cont:
                    continue
                states.append(last[b:b + 1])
                if len(cont) > 1:
                    states.append(body_hidden[b, offset:offset + len(cont) - 1])
                    offset += len(cont) - 1
                targets += cont
                owners += [(g.context, cont)] * len(cont)
        sums: dict = {(g.context, c): [0.0, True] for g in groups for c in g.continuations}
        if states:
            logprobs = F.log_softmax(self.model.lm_head(torch.cat(states)).float(), dim=-1)
            target = torch.tensor(targets, device=device)
            token_lp = logprobs.gather(1, target[:, None])[:, 0].tolist()
            greedy = (logprobs.argmax(-1) == target).tolist()
            for key, lp, is_greedy in zip(owners, token_lp, greedy, strict=True):
                sums[key][0] += lp
                sums[key][1] = sums[key][1] and is_greedy
        for key, (total, is_greedy) in sums.items():
            results[key] = (total, bool(is_greedy))

    def _decode(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Final hidden states of new tokens after `cache` under an arbitrary (B, 1, T, S) boolean mask."""
        body, config = self.model.model, self.model.config
        x = body.embed_tokens(ids)
        cos, sin = rope_cos_sin(positions, config.head_dim, config.rope_theta, x.dtype)
        for block in body.layers:
            x = block(x, cos, sin, mask, cache)
        cache.length += ids.shape[1]
        return body.norm(x)

    # ---- generation ----

    @torch.inference_mode()
    def generate(self, contexts: Sequence[str], *, until: Sequence[str] = ("\n",), max_tokens: int = 128,
                 batch_size: int = 16, progress: Callable[[int], None] | None = None) -> list[str]:
        """Greedy continuations, cut at the first stop sequence; never more than `max_tokens` tokens."""
        if max_tokens <= 0:
            raise UsageError(f"max tokens must be positive, got {max_tokens}")
        encoded = [self.encode(c)[-max(1, self.max_length - max_tokens):] for c in contexts]
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
        outputs = [""] * len(encoded)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            for i, text in zip(batch, self._generate_batch([encoded[i] for i in batch], until, max_tokens),
                               strict=True):
                outputs[i] = text
            if progress:
                progress(len(batch))
        return outputs

    def _generate_batch(self, prompts: list[list[int]], until: Sequence[str], max_tokens: int) -> list[str]:
        B, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.zeros(B, width, dtype=torch.long)
        pad = torch.zeros(B, width + max_tokens, dtype=torch.long)
        for b, p in enumerate(prompts):  # left padding: every row's last prompt token is at the same column
            ids[b, width - len(p):] = torch.tensor(p)
            pad[b, width - len(p):width] = 1
        ids, pad = ids.to(self.device), pad.to(self.device)
        positions = (pad[:, :width].cumsum(-1) - 1).clamp(min=0)
        dtype = next(self.model.parameters()).dtype
        cache = KVCache(self.model.config, B, width + max_tokens, dtype, self.device)
        logits = self.model(ids, position_ids=positions, attention_mask=pad[:, :width], cache=cache)[:, -1]
        generated: list[list[int]] = [[] for _ in range(B)]
        texts = [""] * B
        done = [False] * B
        next_pos = positions[:, -1:] + 1
        for step in range(max_tokens):
            token = logits.float().argmax(-1)
            for b in range(B):
                if done[b]:
                    continue
                t = int(token[b])
                if t == self.eos_id:
                    done[b] = True
                    continue
                generated[b].append(t)
                texts[b] = self.tokenizer.decode(generated[b], skip_special_tokens=True)
                if any(s in texts[b] for s in until):
                    done[b] = True
            if all(done) or step == max_tokens - 1:
                break
            pad[:, width + step] = 1
            logits = self.model(token[:, None], position_ids=next_pos, attention_mask=pad[:, :width + step + 1],
                                cache=cache)[:, -1]
            next_pos = next_pos + 1
        return [cut(t, until) for t in texts]


def cut(text: str, until: Sequence[str]) -> str:
    """The text before the first stop sequence (lm-eval splits on each in turn)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text
