"""Continuous batching for the server: one scheduler thread owns the model and serves every request at once.

Why not `decode_steps`: its batch is fixed at the start (one shared cache length, left padding). A server must let
requests join a running batch between two decode steps and leave it as soon as they finish, so here every row of
the cache (a *slot*) has its own length:

- `SlotCache` holds `slots` rows × `max_len` columns per layer. Active requests occupy rows 0..n-1 contiguously
  (a finished row is filled with the last active row, so a decode step works on the view `[:n]`, never a gather).
- New requests are prefilled together, right-padded, into the next free rows: positions start at 0 in every
  row and causal attention never lets a real token see the padding after it, so each row equals its prompt alone.
- A decode step runs the model once on one pending token per active row, each at its own position; a boolean
  mask over cache columns (column ≤ the row's position) hides other rows' longer history and stale columns.
  A backend that takes such rows (the fused step, fournil.lm.fused: each row names its own cache row and
  column) runs that step; otherwise, and for prefills, the eager forward does.
- Sampling (temperature, top-k/p, min-p, repetition penalty, seed, stop strings, max_tokens) is per request, with
  the same functions as the engine, so a greedy or seeded request gives the same text alone or in a busy batch.

The scheduler never blocks on clients: results go out through each request's `emit` callback (the server turns it
into `loop.call_soon_threadsafe`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from fournil.console import UsageError
from fournil.lm import kernels
from fournil.lm.backends import choose
from fournil.lm.config import ModelConfig
from fournil.lm.llama import Llama
from fournil.lm.prompt import PromptTokenizer, StreamDecoder
from fournil.lm.sampling import SamplingConfig, pick, process_logits

log = logging.getLogger(__name__)

Event = tuple[Any, ...]  # ("delta", text) | ("done", finish_reason, prompt_tokens, completion_tokens) | ("error", msg)


def available_memory(device=None) -> int:
    """Bytes a new allocation may take: free memory of a CUDA device, else the host's MemAvailable (what the
    kernel can hand out without swapping), within a cgroup v2 memory limit when there is one."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    free = None
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/meminfo", encoding="ascii") as f:
        free = 1024 * int(next(line for line in f if line.startswith("MemAvailable:")).split()[1])
    if free is None:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    with contextlib.suppress(OSError, ValueError):
        root = Path("/sys/fs/cgroup")
        limit = (root / "memory.max").read_text().strip()
        if limit != "max":
            free = min(free, int(limit) - int((root / "memory.current").read_text()))
    return free


def check_cache(config: ModelConfig, slots: int, max_len: int, itemsize: int, device=None) -> None:
    """Refuse a slot cache larger than the memory free for it, saying how many slots would fit."""
    from fournil.lm.info import human

    per_slot = 2 * config.n_layers * config.kv_heads * max_len * config.head_dim * itemsize  # keys + values
    free = available_memory(device)
    if slots * per_slot > free:
        raise UsageError(f"--slots {slots} × --context {max_len} needs a KV cache of {human(slots * per_slot, 'B')}, "
                         f"more than the {human(free, 'B')} of memory available; at most {free // per_slot} slots "
                         "fit at this context")


class SlotCache:
    """Keys/values for `slots` independent rows; the caller plans each forward (prefill or decode) before it runs.

    A `KVStore` whose rows are addressed through a plan rather than one shared length: `length` stays 0, so
    the model never derives positions or a causal offset from it (the caller passes both).
    """

    @property
    def length(self) -> int:
        return 0

    @length.setter
    def length(self, value: int) -> None:
        pass  # the forward pass counts tokens in; the plan, not a count, says where rows stand

    def __init__(self, config: ModelConfig, slots: int, max_len: int, dtype: torch.dtype, device=None):
        shape = (config.n_layers, slots, config.kv_heads, max_len, config.head_dim)
        check_cache(config, slots, max_len, dtype.itemsize, device)  # before torch.zeros takes (or promises) it
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # as KVCache: all layers, k[layer] a view
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.k, self.v = list(self.keys.unbind(0)), list(self.values.unbind(0))
        self.slots, self.max_len = slots, max_len
        self._rows = slice(0, 0)
        self._cols: torch.Tensor | None = None  # decode: the column each row writes
        self._span = 0

    def plan_prefill(self, start: int, count: int) -> None:
        """The next forward writes rows start..start+count-1 from column 0 (prompts, right-padded)."""
        self._rows, self._cols = slice(start, start + count), None

    def plan_decode(self, positions: torch.Tensor) -> None:
        """The next forward writes one token per row 0..n-1, row i at column positions[i]."""
        self._rows, self._cols = slice(0, len(positions)), positions
        self._span = int(positions.max()) + 1

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cols is None:  # prefill: the keys are exactly the new ones
            width = k.shape[2]
            self.k[layer][self._rows, :, :width] = k
            self.v[layer][self._rows, :, :width] = v
            return k, v
        kc, vc = self.k[layer][self._rows], self.v[layer][self._rows]  # views
        rows = torch.arange(len(self._cols), device=k.device)
        kc[rows, :, self._cols] = k[:, :, 0]
        vc[rows, :, self._cols] = v[:, :, 0]
        return kc[:, :, :self._span], vc[:, :, :self._span]

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy row src's first `length` columns into row dst (compaction after a request leaves)."""
        for k, v in zip(self.k, self.v, strict=True):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]


def forward_rows(model: Llama, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
                 cache: SlotCache, last: torch.Tensor) -> torch.Tensor:
    """Float32 logits (B, V) at column `last[b]` of each row, under our positions and mask (a slot cache has no
    one shared length to derive them from)."""
    hidden = model(ids, position_ids=positions, attention_mask=mask, cache=cache, hidden_only=True)
    return model.lm_head(hidden[torch.arange(len(last), device=hidden.device), last]).float()


@dataclass(eq=False)
class Request:
    """One generation: prompt ids and sampling in, events out through `emit` (called on the scheduler thread).

    `cancelled` may be set from any thread (client gone); the scheduler drops the request at its next step.
    """

    prompt: list[int]
    sampling: SamplingConfig
    emit: Callable[[Event], None]
    cancelled: bool = False
    # scheduler state
    limit: int = 0
    generated: int = 0
    pending: int = 0
    decoder: StreamDecoder | None = None
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None
    submitted: float = field(default_factory=time.monotonic)


class Scheduler:
    """Owns the model; admits queued requests into free slots, one decode forward per step for all of them."""

    def __init__(self, model: Llama, tokenizer: PromptTokenizer, slots: int = 16, context: int | None = None,
                 prefill_tokens: int = 4096, backend: str = "auto"):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.slots = slots
        self.context = min(context or model.config.max_seq_len, model.config.max_seq_len)
        self.prefill_tokens = prefill_tokens
        self.device = next(model.parameters()).device
        self.cache = SlotCache(model.config, slots, self.context, model.model.embed_tokens.weight.dtype,
                               self.device)
        # the fused step decodes all rows in one call, where it runs (fournil.lm.backends.choose); prompts stay eager
        self.backend = choose(self.model, backend)
        self.inbox: queue.SimpleQueue[Request | None] = queue.SimpleQueue()
        self.waiting: deque[Request] = deque()
        self.active: list[Request] = []  # row i of the cache belongs to active[i]
        self.lengths: list[int] = []  # tokens in the cache per active row
        self.steps = 0  # decode forwards so far
        self.peak_batch = 0  # most rows one decode forward served
        self.cancelled = 0  # requests dropped because their client went away
        self._stop = False
        self._thread: threading.Thread | None = None

    # --- threads -----------------------------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queue a request (any thread). The prompt must fit: len(prompt) < context (checked by the caller)."""
        if not request.prompt or len(request.prompt) >= self.context:
            raise ValueError(f"prompt of {len(request.prompt)} tokens does not fit the context {self.context}")
        if request.sampling.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        self.inbox.put(request)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fournil-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is running and queued, then end the thread."""
        self.inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout)

    def load(self) -> dict[str, int]:
        """Occupancy, for /health (read without a lock: a snapshot is good enough)."""
        return {"active": len(self.active), "waiting": len(self.waiting) + self.inbox.qsize(), "slots": self.slots,
                "steps": self.steps, "peak_batch": self.peak_batch, "cancelled": self.cancelled}

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                self._collect(block=not self.active and not self.waiting and not self._stop)
                if self._stop and not self.active and not self.waiting:
                    return
                try:
                    self.step()
                except Exception as exc:  # never let one bad step kill the server: fail what was running
                    log.exception("scheduler step failed")
                    for request in self.active + list(self.waiting):
                        request.emit(("error", f"generation failed: {exc}"))
                    self.active, self.lengths = [], []
                    self.waiting.clear()

    def _collect(self, block: bool) -> None:
        while True:
            try:
                item = self.inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            if item is None:
                self._stop = True
            else:
                self.waiting.append(item)

    # --- one step ----------------------------------------------------------------------------------------------

    def step(self) -> None:
        """Drop cancelled requests, decode one token for every active row, then admit and prefill waiting ones."""
        with torch.inference_mode():
            self._collect(block=False)
            if any(r.cancelled for r in self.waiting):
                self.cancelled += sum(r.cancelled for r in self.waiting)
                self.waiting = deque(r for r in self.waiting if not r.cancelled)
            if gone := [i for i, r in enumerate(self.active) if r.cancelled]:
                self.cancelled += len(gone)
                self._remove(gone)
            if self.active:
                self._decode()
            self._admit()

    def _decode(self) -> None:
        n = len(self.active)
        positions = torch.tensor(self.lengths, dtype=torch.long, device=self.device)
        ids = torch.tensor([r.pending for r in self.active], dtype=torch.long, device=self.device)[:, None]
        logits = self.backend.rows(ids[:, 0], positions, self.cache.keys, self.cache.values)
        if logits is None:
            self.cache.plan_decode(positions)
            span = self.cache._span
            mask = None  # every row as long as the longest: attend to all columns, as KVCache decoding does
            if min(self.lengths) + 1 < span:
                mask = (torch.arange(span, device=self.device)[None] <= positions[:, None])[:, None, None, :]
            logits = forward_rows(self.model, ids, positions[:, None], mask, self.cache,
                                  torch.zeros(n, dtype=torch.long, device=self.device))
        self.lengths = [length + 1 for length in self.lengths]
        self.steps += 1
        self.peak_batch = max(self.peak_batch, n)
        self._sample(logits, 0)

    def _admit(self) -> None:
        batch: list[Request] = []
        width = 0
        while self.waiting and len(self.active) + len(batch) < self.slots:
            request = self.waiting[0]
            grown = max(width, len(request.prompt))
            if batch and grown * (len(batch) + 1) > self.prefill_tokens:
                break
            batch.append(self.waiting.popleft())
            width = grown
        if not batch:
            return
        start = len(self.active)
        for request in batch:
            self._prepare(request)
        ids = torch.full((len(batch), width), self.tokenizer.pad_id, dtype=torch.long)
        for row, request in enumerate(batch):
            ids[row, :len(request.prompt)] = torch.tensor(request.prompt, dtype=torch.long)
        ids = ids.to(self.device)
        positions = torch.arange(width, device=self.device).expand(len(batch), width)
        last = torch.tensor([len(r.prompt) - 1 for r in batch], dtype=torch.long, device=self.device)
        self.cache.plan_prefill(start, len(batch))
        logits = forward_rows(self.model, ids, positions, None, self.cache, last)
        self.active += batch
        self.lengths += [len(r.prompt) for r in batch]
        self._sample(logits, start)

    def _prepare(self, request: Request) -> None:
        s = request.sampling
        request.limit = min(s.max_tokens, self.context - len(request.prompt))
        request.decoder = StreamDecoder(self.tokenizer, s.stop)
        if not s.greedy:
            request.generator = torch.Generator(device=self.device)
            request.generator.manual_seed(s.seed if s.seed is not None else secrets.randbits(63))
        if s.repetition_penalty != 1.0:
            request.seen = torch.zeros((1, self.model.config.vocab_size), dtype=torch.bool, device=self.device)
            request.seen[0, torch.tensor(request.prompt, device=self.device)] = True

    def _sample(self, logits: torch.Tensor, start: int) -> None:
        """Pick the next token of rows start.. (one logits row each), emit text, retire finished rows."""
        greedy = kernels.argmax(logits).tolist()
        finished = []
        for offset, request in enumerate(self.active[start:]):
            s = request.sampling
            if s.greedy and request.seen is None:
                token = greedy[offset]
            else:
                token = _pick_row(logits[offset:offset + 1], request)
            if self._advance(request, token):
                finished.append(start + offset)
        self._remove(finished)

    def _advance(self, request: Request, token: int) -> bool:
        """Account one sampled token; True when the request is over (and its last events are sent)."""
        s, decoder = request.sampling, request.decoder
        assert decoder is not None
        request.generated += 1
        if token in self.tokenizer.eos_ids and not s.ignore_eos:
            return self._finish(request, "stop")
        if request.seen is not None:
            request.seen[0, token] = True
        if delta := decoder.push(token):
            request.emit(("delta", delta))
        if decoder.stopped:
            return self._finish(request, "stop")
        if request.generated >= request.limit:
            return self._finish(request, "length")
        request.pending = token
        return False

    def _finish(self, request: Request, reason: str) -> bool:
        assert request.decoder is not None
        if rest := request.decoder.flush():
            request.emit(("delta", rest))
        request.emit(("done", reason, len(request.prompt), request.generated))
        return True

    def _remove(self, rows: Sequence[int]) -> None:
        """Free rows; the last active row moves into each hole so rows 0..n-1 stay contiguous."""
        for row in sorted(rows, reverse=True):
            last = len(self.active) - 1
            if row != last:
                self.cache.move(last, row, self.lengths[last])
                self.active[row], self.lengths[row] = self.active[last], self.lengths[last]
            self.active.pop()
            self.lengths.pop()


def _pick_row(logits: torch.Tensor, request: Request) -> int:
    """One row's token with its own knobs and generator. A temperature or penalty so extreme that the scaled logits
    overflow (1e-300 is a valid temperature) has the limit behaviour, argmax, instead of sampling from NaN."""
    s = request.sampling
    row = process_logits(logits, request.seen, s)
    if not s.greedy and not bool(torch.isfinite(row.softmax(-1)).all()):
        return int(process_logits(logits, request.seen, replace(s, temperature=0.0)).argmax())
    return int(pick(row, s, request.generator)[0])
