"""One scorer for every stage: log-likelihoods of token ids, of whole streams in windows, and bits per byte.

`Scorer` takes a loaded model (fournil's `Llama`, float or quantised) and token ids; it never tokenises, so each
caller keeps its own rules (lm-eval's for `fournil eval`, the bake's for its language check). It computes what one
plain row per request would, for less: a context runs once for all its continuations, a few-shot prefix once for
all the documents that repeat it, short requests share packed rows, and only the scored positions reach the
output projection. `window_nats` computes `rolling`'s windows through the plain `model(ids)` call alone, for a
model wrapped for training (DDP, FSDP, compiled blocks), whose output projection cannot be called on its own.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fournil.lm.llama import Llama

Ids = Sequence[int]


@dataclass(frozen=True)
class Group:
    """One context scored against several continuations (token ids, context never empty)."""

    context: tuple[int, ...]
    continuations: tuple[tuple[int, ...], ...]


class Scorer:
    """Batched, prefix-sharing, packed log-likelihoods of token ids under one model."""

    def __init__(self, model: Llama, *, batch_tokens: int = 4096, max_length: int | None = None):
        self.model = model
        self.batch_tokens = batch_tokens
        self.max_length = max_length or model.config.max_seq_len  # tokens one row sees; the rolling window
        embeddings = model.model.embed_tokens.weight  # a quantised model's linears hold int8 or packed weights
        self.device, self.dtype = embeddings.device, embeddings.dtype

    def loglikelihood(self, pairs: Sequence[tuple[Ids, Ids]]) -> list[tuple[float, bool]]:
        """(sum of log-probabilities, whether greedy decoding gives the continuation) per (context, continuation);
        a context is never empty (score a text from its start after a BOS or EOS token)."""
        keys = [(tuple(context), tuple(continuation)) for context, continuation in pairs]
        groups: dict[tuple[int, ...], dict[tuple[int, ...], None]] = {}  # a context's continuations, in order
        for context, continuation in keys:
            groups.setdefault(context, {})[continuation] = None
        scored = self.score_groups([Group(k, tuple(v)) for k, v in groups.items()])
        return [scored[k] for k in keys]

    def rolling(self, streams: Sequence[Ids]) -> list[float]:
        """Log-likelihood of each stream's tokens after its first, in disjoint windows of `max_length` tokens."""
        windows = [(i, Group((ids[start - 1],), (tuple(ids[start:start + self.max_length]),)))
                   for i, ids in enumerate(streams) for start in range(1, len(ids), self.max_length)]
        scored = self.score_groups([g for _, g in windows])
        totals = [0.0] * len(streams)
        for i, g in windows:
            totals[i] += scored[(g.context, g.continuations[0])][0]
        return totals

    @torch.inference_mode()
    def score_groups(self, groups: Sequence[Group]) -> dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[float, bool]]:
        """Score every (context, continuation) of every group, many groups per forward pass.

        Three layouts, all computing what separate (context + continuation) rows would: contexts sharing a long
        prefix (the same few-shot examples) run after that prefix, computed once; a context much longer than its
        continuations is prefilled with causal attention and its continuations follow in a second pass (cheaper
        attention than a masked pass over all); the rest run context and continuations in one masked pass."""
        truncated = {g: self._truncate(g) for g in groups}
        results: dict = {}
        for prefix, members in shared_prefixes(list(dict.fromkeys(truncated.values())), MIN_SHARED):
            long = [] if prefix else [g for g in members if len(g.context) >= max(MIN_SHARED, 2 * _inputs(g))]
            if long:
                self._batched(long, lambda g: len(g.context), self._score_two_pass, results, pack=False)
                members = [g for g in members if len(g.context) < max(MIN_SHARED, 2 * _inputs(g))]
            kv = self._prefill(prefix) if prefix else None
            skip = len(prefix)
            self._batched(members, lambda g, skip=skip: len(g.context) - skip + _inputs(g),
                          lambda rows, out, skip=skip, kv=kv: self._score_rows(rows, skip, kv, out), results,
                          pack=True)
        return {(g.context, c): results[(t.context, c)] for g, t in truncated.items() for c in g.continuations}

    def _batched(self, groups: list[Group], width: Callable[[Group], int],
                 score: Callable[[list[list[Group]], dict], None], results: dict, pack: bool) -> None:
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
        ids = _padded([g.context for g in groups], 0)
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
        columns = []  # per row: token ids, positions, segments (0 context, j continuation j), group in the row
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
            columns.append((row, pos, seg, own))
        B, T = len(columns), max(len(c[0]) for c in columns)
        hidden = torch.zeros(B, T, self.model.config.dim, device=device, dtype=self.dtype)
        if T:
            ids, pos_t, seg_t, own_t = (_padded([c[i] for c in columns], fill).to(device)
                                        for i, fill in enumerate((0, 0, -1, -1)))
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
            hidden = self.model(ids, position_ids=pos_t, attention_mask=mask[:, None], cache=past, hidden_only=True)
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
        results.update({(g.context, c): (0.0, True) for _, g, _, _ in placed for c in g.continuations})
        if picks:
            token_lp, greedy = [], []
            pick_t, target_t = torch.tensor(picks, device=device), torch.tensor(targets, device=device)
            for start in range(0, len(picks), PICK_CHUNK):  # memory bounded by a (chunk × vocab) block
                logits = self.model.lm_head(states[pick_t[start:start + PICK_CHUNK]]).float()
                target = target_t[start:start + PICK_CHUNK]
                # log p(target) = logit - logsumexp: no second block as log_softmax would make
                token_lp += (logits.gather(1, target[:, None])[:, 0] - logits.logsumexp(-1)).tolist()
                greedy += (logits.argmax(-1) == target).tolist()
            for key, lp, is_greedy in zip(owners, token_lp, greedy, strict=True):
                total, all_greedy = results[key]
                results[key] = (total + lp, all_greedy and is_greedy)


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


def _padded(rows: Sequence[Sequence[int]], fill: int) -> torch.Tensor:
    """Rows of integers right-padded with `fill` into one (rows, longest) tensor."""
    out = torch.full((len(rows), max(len(r) for r in rows)), fill, dtype=torch.long)
    for b, row in enumerate(rows):
        out[b, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


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


@torch.no_grad()
def window_nats(model: torch.nn.Module, ids: torch.Tensor, window: int, batch_size: int) -> tuple[float, int]:
    """`Scorer.rolling`'s windows of a 1-d stream through `model(ids)` only, `batch_size` windows per pass: the
    summed next-token loss in nats and the number of tokens predicted (all but the first)."""
    n_full = (len(ids) - 1) // window
    full = ids[: n_full * window + 1].unfold(0, window + 1, window)  # (n_full, window + 1): neighbours share a token
    batches = list(full.split(batch_size)) if n_full else []
    if len(ids) - 1 > n_full * window:  # the shorter last window
        batches.append(ids[n_full * window:][None])
    nats = 0.0
    for batch in batches:
        logits = model(batch[:, :-1])
        nats += F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum").item()
    return nats, max(len(ids) - 1, 0)


def bits_per_byte(nats: float, n_bytes: int) -> float:
    """A text's cost in bits per UTF-8 byte: comparable across tokenizers, unlike a per-token loss."""
    return nats / math.log(2) / n_bytes
