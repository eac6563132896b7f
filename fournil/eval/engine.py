"""The scoring engine: batched log-likelihoods and greedy generation through fournil's runtime (fournil.lm).

Log-likelihood requests that share a context (the choices of one multiple-choice question) run the context once,
with all its continuations in the same row, each attending to the context and to itself only, positions
restarting after the context: exactly the computation of separate rows, done once per context instead of once
per choice. Contexts that start with the same long prefix (few-shot examples repeated for every document) share
one prefill of it. Rows are sorted by length and batched under a token budget so padding stays small, and only
the positions that score a continuation go through the vocabulary projection.

Tokenisation follows lm-eval's `hf` model so that scores agree: texts are encoded with the tokenizer's default
special tokens, trailing context spaces move to the continuation, and a continuation's tokens are the tail of
the encoded (context + continuation), not the continuation encoded alone.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    """One context scored against several continuations (token ids, context never empty)."""

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]


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
        """Score every (context, continuation) of every group, many groups per forward pass.

        Three layouts, all computing what separate (context + continuation) rows would: contexts sharing a long
        prefix (the same few-shot examples) run after that prefix, computed once; a context much longer than its
        continuations is prefilled with causal attention and its continuations follow in a second pass (cheaper
        attention than a masked pass over all); the rest run context and continuations in one masked pass."""
        groups = [self._truncate(g) for g in groups]
        results: dict = {}
        for prefix, members in shared_prefixes(groups, MIN_SHARED):
            long = [] if prefix else [g for g in members if len(g.context) >= max(MIN_SHARED, 2 * _inputs(g))]
            if long:
                self._batched(long, lambda g: len(g.context), self._score_two_pass, results, progress, pack=False)
                members = [g for g in members if len(g.context) < max(MIN_SHARED, 2 * _inputs(g))]
            kv = self._prefill(prefix) if prefix else None
            skip = len(prefix)
            self._batched(members, lambda g, skip=skip: len(g.context) - skip + _inputs(g),
                          lambda rows, out, skip=skip, kv=kv: self._score_rows(rows, skip, kv, out), results,
                          progress, pack=True)
        return results

    def _batched(self, groups: list[Group], width: Callable[[Group], int],
                 score: Callable[[list[list[Group]], dict], None], results: dict,
                 progress: Callable[[int], None] | None, pack: bool) -> None:
        """Rows widest first, as many per pass as the token budget allows. With `pack`, short groups share a row
        (best fit into rows as wide as the widest group; the mask keeps them apart), so little is padding."""
        rows = pack_rows(groups, width) if pack else [[g] for g in groups]
        fill = {id(row): sum(width(g) for g in row) for row in rows}
        rows.sort(key=lambda row: -fill[id(row)])
        start = 0
        while start < len(rows):
            batch = rows[start:start + max(1, self.batch_tokens // max(fill[id(rows[start])], 1))]
            score(batch, results)
            start += len(batch)
            if progress:
                progress(sum(len(g.continuations) for row in batch for g in row))

    def _truncate(self, group: Group) -> Group:
        """lm-eval's left truncation: context + longest continuation fit in max_length + 1 tokens."""
        longest = max((len(c) for c in group.continuations), default=0)
        return Group(group.context[-max(1, self.max_length + 1 - longest):], group.continuations)

    def _prefill(self, prefix: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Keys and values of every layer for a prefix that several contexts start with (computed once)."""
        capture = _Capture()
        self.model(torch.tensor([prefix], device=self.device), cache=capture, hidden_only=True)
        return capture.kv

    def _score_two_pass(self, rows: list[list[Group]], results: dict) -> None:
        """Contexts prefilled (causal, right-padded: real tokens never see the pads after them), then every
        group's continuations in one row after its own context's keys and values (one group per row)."""
        groups = [g for row in rows for g in row]
        assert len(groups) == len(rows), "two-pass rows hold one group each"  # `last` and `visible` are per row
        lengths = torch.tensor([len(g.context) for g in groups])
        ids = torch.zeros(len(groups), int(lengths.max()), dtype=torch.long)
        for b, g in enumerate(groups):
            ids[b, :len(g.context)] = torch.tensor(g.context)
        capture = _Capture()
        hidden = self.model(ids.to(self.device), cache=capture, hidden_only=True)
        last = hidden[torch.arange(len(groups)), lengths - 1]
        visible = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
        self._score_rows(rows, None, capture.kv, results, visible=visible.to(self.device), last=last)

    def _score_rows(self, packed: Sequence[Sequence[Group]], skip: int | None, past_kv: list | None, results: dict,
                    *, visible: torch.Tensor | None = None, last: torch.Tensor | None = None) -> None:
        """One row per list of groups after `past_kv`; in it each group's context tokens from `skip` on, then
        each continuation without its last token. With `skip` None the whole context is in `past_kv` (one group
        per row, `visible` marking its context's real tokens, `last` its last token's state); otherwise `past_kv`
        is a prefix of `skip` tokens shared by all (or None). A context token attends causally to its own
        context; continuation j to its whole context and to itself, at the positions it would have right after
        the context; nothing sees another group of the row. Only the positions that predict a continuation token
        reach the output projection."""
        device = self.device
        rows, segments, owners_t, positions = [], [], [], []
        placed = []  # (row, group, index of its last context token in the row, index of its first input after)
        for b, row_groups in enumerate(packed):
            row, seg, own, pos = [], [], [], []
            for k, g in enumerate(row_groups):
                rest = [] if skip is None else list(g.context[skip:])
                placed.append((b, g, len(row) + len(rest) - 1, len(row) + len(rest)))
                row += rest
                seg += [0] * len(rest)
                pos += range(len(g.context) - len(rest), len(g.context))
                for j, cont in enumerate(g.continuations, 1):
                    body = cont[:-1]  # a last token is never an input
                    row += body
                    seg += [j] * len(body)
                    pos += range(len(g.context), len(g.context) + len(body))
                own += [k] * (len(row) - len(own))
            rows.append(row)
            segments.append(seg)
            owners_t.append(own)
            positions.append(pos)
        B, T = len(rows), max(len(r) for r in rows)
        hidden = torch.zeros(B, T, self.model.config.dim, device=device, dtype=self.model.lm_head.weight.dtype)
        if T:
            ids = torch.zeros(B, T, dtype=torch.long)
            pos_t = torch.zeros(B, T, dtype=torch.long)
            seg_t = torch.full((B, T), -1, dtype=torch.long)
            own_t = torch.full((B, T), -1, dtype=torch.long)
            for b, (row, seg, own, pos) in enumerate(zip(rows, segments, owners_t, positions, strict=True)):
                ids[b, :len(row)] = torch.tensor(row, dtype=torch.long)
                pos_t[b, :len(row)] = torch.tensor(pos, dtype=torch.long)
                seg_t[b, :len(row)] = torch.tensor(seg, dtype=torch.long)
                own_t[b, :len(row)] = torch.tensor(own, dtype=torch.long)
            seg_t, own_t = seg_t.to(device), own_t.to(device)
            index = torch.arange(T, device=device)
            key, query = seg_t[:, None, :], seg_t[:, :, None]
            same_group = (own_t[:, None, :] == own_t[:, :, None]) & (own_t[:, None, :] >= 0)
            mask = same_group & ((key == 0) | (key == query)) & (index[None, :] <= index[:, None])[None]
            mask |= torch.eye(T, dtype=torch.bool, device=device)[None]  # padding attends to itself: no NaN
            if visible is not None:  # each row's own context
                mask = torch.cat([visible[:, None, :].expand(B, T, -1), mask], dim=-1)
            elif skip:  # the shared prefix is visible to every token
                mask = torch.cat([torch.ones(B, T, skip, dtype=torch.bool, device=device), mask], dim=-1)
            past = _Prefix(past_kv, B) if past_kv else None
            hidden = self._forward(ids.to(device), pos_t.to(device), mask[:, None], past)
        states = hidden.reshape(B * T, hidden.shape[-1])
        if last is not None:
            states = torch.cat([states, last.to(states.dtype)])
        picks, targets, owners = [], [], []
        for b, g, last_context, offset in placed:
            first = B * T + b if skip is None else b * T + last_context
            for cont in g.continuations:
                if not cont:
                    continue
                picks += [first, *range(b * T + offset, b * T + offset + len(cont) - 1)]
                offset += len(cont) - 1
                targets += cont
                owners += [(g.context, cont)] * len(cont)
        sums: dict = {(g.context, c): [0.0, True] for _, g, _, _ in placed for c in g.continuations}
        if picks:
            token_lp, greedy = [], []
            pick_t, target_t = torch.tensor(picks, device=device), torch.tensor(targets, device=device)
            for start in range(0, len(picks), PICK_CHUNK):  # memory bounded by a (chunk × vocab) block
                logits = self.model.lm_head(states[pick_t[start:start + PICK_CHUNK]]).float()
                target = target_t[start:start + PICK_CHUNK]
                # log p(target) = logit - logsumexp: no second block as log_softmax would make
                token_lp += (logits.gather(1, target[:, None])[:, 0] - logits.logsumexp(-1)).tolist()
                greedy += (logits.argmax(-1) == target).tolist()
            for key_, lp, is_greedy in zip(owners, token_lp, greedy, strict=True):
                sums[key_][0] += lp
                sums[key_][1] = sums[key_][1] and is_greedy
        for key_, (total, is_greedy) in sums.items():
            results[key_] = (total, bool(is_greedy))

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, past: _Prefix | None
                 ) -> torch.Tensor:
        """Final hidden states under an arbitrary (B, 1, T, S) boolean mask, after an optional shared prefix."""
        return self.model(ids, position_ids=positions, attention_mask=mask, cache=past, hidden_only=True)

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


PICK_CHUNK = 1024  # scored positions per output-projection block (8000 picks × a 32k vocab would be 1 GB)
MIN_SHARED = 32  # tokens: a shorter common prefix is not worth its own forward pass


def shared_prefixes(groups: Sequence[Group], min_shared: int) -> list[tuple[tuple[int, ...], list[Group]]]:
    """Groups clustered by a common context prefix worth computing once: (prefix, members), with an empty prefix
    for the groups that share nothing. Sorting the contexts puts the ones with long common prefixes (the same
    few-shot examples, FrenchBench's `first_n` sampler) next to each other; a neighbour joins a cluster while
    the tokens saved do not shrink. A prefix always leaves at least one context token to each member (the last
    context token's state scores the first continuation token)."""
    order = sorted(groups, key=lambda g: g.context)
    clusters: list[tuple[int, list[Group]]] = []
    for g in order:
        if clusters:
            shared, members = clusters[-1]
            first = members[0].context
            limit = min(shared, len(g.context) - 1)
            common = 0
            while common < limit and first[common] == g.context[common]:
                common += 1
            if common >= min_shared and len(members) * common >= (len(members) - 1) * shared:
                clusters[-1] = (common, [*members, g])
                continue
        clusters.append((len(g.context) - 1, [g]))
    out: list[tuple[tuple[int, ...], list[Group]]] = []
    alone: list[Group] = []
    for shared, members in clusters:
        if len(members) > 1:
            out.append((members[0].context[:shared], members))
        else:
            alone += members
    return ([((), alone)] if alone else []) + out


class _Capture:
    """A stand-in KV cache that keeps each layer's keys and values of one forward pass."""

    def __init__(self) -> None:
        self.kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.kv.append((k, v))
        return k, v


def pack_rows(groups: Sequence[Group], width: Callable[[Group], int]) -> list[list[Group]]:
    """Groups into rows no wider than the widest group: widest first, each into the fullest row it still fits
    (best fit), so short groups fill the ends of long rows instead of padding."""
    order = sorted(groups, key=lambda g: -width(g))
    if not order:
        return []
    capacity = width(order[0])
    rows: list[list[Group]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row index), sorted
    for g in order:
        w = width(g)
        at = bisect.bisect_left(room, (w, -1))
        if at < len(room):
            free, index = room.pop(at)
            rows[index].append(g)
        else:
            free, index = capacity, len(rows)
            rows.append([g])
        if free - w > 0:
            bisect.insort(room, (free - w, index))
    return rows


def _inputs(group: Group) -> int:
    """Continuation tokens that are model inputs (all but each continuation's last)."""
    return sum(max(len(c) - 1, 0) for c in group.continuations)


class _Prefix:
    """A stand-in KV cache holding keys/values computed before: the mask says which ones each token sees."""

    def __init__(self, kv: list[tuple[torch.Tensor, torch.Tensor]], batch: int) -> None:
        self.kv, self.batch = kv, batch
        self.length = kv[0][0].shape[2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pk, pv = self.kv[layer]  # batch 1 (a shared prefix, broadcast) or one row per group
        return (torch.cat([pk.expand(self.batch, -1, -1, -1), k], dim=2),
                torch.cat([pv.expand(self.batch, -1, -1, -1), v], dim=2))


def cut(text: str, until: Sequence[str]) -> str:
    """The text before the first stop sequence (lm-eval splits on each in turn)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text
