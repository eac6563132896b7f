"""Sorted runs on disk and their merge: how the corpus stage sorts and deduplicates more than fits in memory.

A run is a file of (key, payload) records sorted by key (bytes order). Writers keep at most `RUN_BYTES` of records
in memory, then sort them and write one run; readers merge any number of runs in key order holding one record per
run (more than `FANIN` runs are merged in rounds through a scratch folder, so open files stay bounded too).
The record framing is binary (two little-endian u32 lengths, key, payload): keys may hold any byte.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterable, Iterator
from operator import itemgetter
from pathlib import Path

from fournil import artifacts

RUN_BYTES = 32 << 20  # records held before a run is written: the memory a writer needs, whatever the corpus size
FANIN = 256  # runs merged at once (a 64 KiB read buffer each)
_HEAD = struct.Struct("<II")


def write_run(path: Path, records: Iterable[tuple[bytes, bytes]]) -> None:
    """Write records (already in key order) as one run, atomically."""
    with artifacts.atomic_path(path) as tmp, open(tmp, "wb", buffering=1 << 20) as f:
        for key, payload in records:
            f.write(_HEAD.pack(len(key), len(payload)))
            f.write(key)
            f.write(payload)


def read_run(path: Path) -> Iterator[tuple[bytes, bytes]]:
    with open(path, "rb", buffering=1 << 16) as f:  # FANIN of them are open at once
        while head := f.read(_HEAD.size):
            if len(head) < _HEAD.size:
                raise ValueError(f"{path}: a run cut in the middle of a record")
            n_key, n_payload = _HEAD.unpack(head)
            key, payload = f.read(n_key), f.read(n_payload)
            if len(key) + len(payload) < n_key + n_payload:
                raise ValueError(f"{path}: a run cut in the middle of a record")
            yield key, payload


class RunWriter:
    """Collects (key, payload) records and writes them as sorted runs `<folder>/<prefix><n:05d>.run`, one every
    `max_bytes` of records. Records with equal keys keep the order they were added in."""

    def __init__(self, folder: Path, prefix: str, max_bytes: int | None = None):
        self.folder, self.prefix, self.max_bytes = Path(folder), prefix, max_bytes or RUN_BYTES
        self.paths: list[Path] = []
        self._records: list[tuple[bytes, bytes]] = []
        self._bytes = 0

    def add(self, key: bytes, payload: bytes = b"") -> None:
        self._records.append((key, payload))
        self._bytes += len(key) + len(payload) + 160  # + a tuple and two bytes objects: tiny records count too
        if self._bytes >= self.max_bytes:
            self._spill()

    def _spill(self) -> None:
        self._records.sort(key=itemgetter(0))  # stable
        path = self.folder / f"{self.prefix}{len(self.paths):05d}.run"
        write_run(path, self._records)
        self.paths.append(path)
        self._records, self._bytes = [], 0

    def close(self) -> list[Path]:
        """Write what is left (as one more run, if any) and return every run written, in order."""
        if self._records:
            self._spill()
        return self.paths


def merge(paths: list[Path], scratch: Path, fanin: int | None = None) -> Iterator[tuple[bytes, bytes]]:
    """Every record of these runs in key order; equal keys come in the order of `paths`, then of each run.

    More than `fanin` runs are first merged `fanin` consecutive runs at a time into runs in `scratch` (removed
    once read), which keeps the order of equal keys."""
    paths, level, fanin = list(paths), 0, fanin or FANIN
    while len(paths) > fanin:
        merged = []
        for i in range(0, len(paths), fanin):
            group = paths[i:i + fanin]
            out = Path(scratch) / f"merge-{level}-{i // fanin:05d}.run"
            write_run(out, _merge(group))
            for p in group:
                if p.parent == Path(scratch) and p.name.startswith("merge-"):
                    p.unlink()
            merged.append(out)
        paths, level = merged, level + 1
    yield from _merge(paths)


def _merge(paths: list[Path]) -> Iterator[tuple[bytes, bytes]]:
    return heapq.merge(*(read_run(p) for p in paths), key=itemgetter(0))
