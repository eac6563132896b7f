"""Packed token shards: the contract between the corpus stage (writer) and the train stage (reader).

Layout of a shards directory:
    index.json            seq_len, dtype, vocab size, tokenizer hash, EOS id, shards, counts per category,
                          validation streams per language (with their UTF-8 byte counts, for bits per byte)
    train-00000.bin …     flat token streams (documents joined by EOS), raw little-endian uint16/uint32
    val-fr.bin …          one flat stream per language
    fournil.json          manifest, written last

Sample k of a shard is the window tokens[k·L : k·L + L + 1] (inputs are its first L tokens, targets its last L),
so consecutive samples share one boundary token and nothing is padded. The tokens after the last full window
of each shard are counted in the index (`tail_tokens`), never silently lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fournil import artifacts
from fournil.console import UsageError

INDEX = "index.json"
FORMAT_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


@dataclass
class ShardWriter:
    """Append tokenised documents; shards roll over at `tokens_per_shard`. Call `close()` to publish."""

    directory: Path
    seq_len: int
    vocab_size: int
    eos_id: int
    tokenizer_sha256: str = ""
    tokens_per_shard: int = 1 << 24
    _buffer: list[np.ndarray] = field(default_factory=list)
    _buffered: int = 0
    _shards: list[dict] = field(default_factory=list)
    _categories: dict[str, dict[str, int]] = field(default_factory=dict)
    _val: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.seq_len < self.tokens_per_shard:  # 0 tokens per shard would roll over forever
            raise ValueError(f"need 0 < seq_len < tokens_per_shard, got {self.seq_len} and {self.tokens_per_shard}")
        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        artifacts.mark_incomplete(self.directory, "fournil.corpus.shards")
        self.dtype = token_dtype(self.vocab_size)

    def add(self, ids: Iterable[int] | np.ndarray, category: str, n_bytes: int = 0) -> None:
        """One document's token ids (EOS appended here) from category `category` (fr, en, code, parallel…)."""
        tokens = np.append(np.asarray(ids, dtype=np.int64), self.eos_id)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"token id out of range [0, {self.vocab_size}) in a {category} document")
        counts = self._categories.setdefault(category, {"documents": 0, "tokens": 0, "bytes": 0})
        counts["documents"] += 1
        counts["tokens"] += tokens.size
        counts["bytes"] += n_bytes
        self._buffer.append(tokens.astype(self.dtype))
        self._buffered += tokens.size
        if self._buffered >= self.tokens_per_shard:
            self._flush()

    def add_many(self, tokens: np.ndarray, sizes: np.ndarray, codes: np.ndarray, categories: Sequence[str],
                 n_bytes: np.ndarray) -> None:
        """Many documents at once, the same shards and counts as `add` per document, without a Python step per
        document: `tokens` holds them back to back, each already ending in EOS; `sizes` their lengths, `codes`
        their category as an index into `categories`, `n_bytes` their UTF-8 sizes. Shards still roll over right
        after the document that fills one."""
        sizes = np.asarray(sizes, dtype=np.int64)
        if not sizes.size:
            return
        if tokens.size and int(tokens.max()) >= self.vocab_size:
            raise ValueError(f"token id out of range [0, {self.vocab_size})")
        uniques, first = np.unique(codes, return_index=True)
        docs = np.bincount(codes, minlength=len(categories))
        toks = np.bincount(codes, weights=sizes, minlength=len(categories))  # float64: exact below 2**53
        nbytes = np.bincount(codes, weights=n_bytes, minlength=len(categories))
        for code in uniques[np.argsort(first)]:  # dict order = first appearance, as `add` gives it
            counts = self._categories.setdefault(categories[code], {"documents": 0, "tokens": 0, "bytes": 0})
            counts["documents"] += int(docs[code])
            counts["tokens"] += int(toks[code])
            counts["bytes"] += int(nbytes[code])
        tokens = tokens.astype(self.dtype, copy=False)
        ends = np.cumsum(sizes)
        pos = 0
        while pos < tokens.size:
            j = int(np.searchsorted(ends, pos + self.tokens_per_shard - self._buffered, side="left"))
            if j >= ends.size:  # no document here fills the shard
                self._buffer.append(tokens[pos:])
                self._buffered += tokens.size - pos
                return
            self._buffer.append(tokens[pos:ends[j]])
            self._buffered += int(ends[j]) - pos
            pos = int(ends[j])
            self._flush()

    def add_validation(self, language: str, documents: Iterable[tuple[Iterable[int], int]]) -> None:
        """A held-out stream for `language`: (token ids, UTF-8 byte count) per document."""
        parts, n_bytes = [], 0
        for ids, size in documents:
            parts.append(np.append(np.asarray(ids, dtype=np.int64), self.eos_id).astype(self.dtype))
            n_bytes += size
        stream = np.concatenate(parts) if parts else np.zeros(0, self.dtype)
        name = f"val-{language}.bin"
        with artifacts.atomic_path(self.directory / name) as tmp:
            _write_array(tmp, stream)
        self._val[language] = {"file": name, "tokens": int(stream.size), "bytes": n_bytes, "documents": len(parts)}

    def _flush(self) -> None:
        if not self._buffer:
            return
        size = sum(part.size for part in self._buffer)
        name = f"train-{len(self._shards):05d}.bin"
        with artifacts.atomic_path(self.directory / name) as tmp:
            _write_array(tmp, *self._buffer)  # piece by piece: no second copy of a whole shard in memory
        samples = max(0, (size - 1) // self.seq_len)
        self._shards.append({"file": name, "tokens": int(size), "samples": samples,
                             "tail_tokens": int(size - samples * self.seq_len)})
        self._buffer, self._buffered = [], 0

    def close(self, **manifest_fields) -> dict:
        self._flush()
        index = {
            "format": FORMAT_VERSION,
            "seq_len": self.seq_len,
            "dtype": self.dtype.name,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "tokenizer_sha256": self.tokenizer_sha256,
            "shards": self._shards,
            "categories": self._categories,
            "validation": self._val,
        }
        artifacts.write_json(self.directory / INDEX, index)
        artifacts.write_manifest(self.directory, producer="fournil.corpus.shards",
                                 samples=sum(s["samples"] for s in self._shards), **manifest_fields)
        return index


class Shards:
    """Read-only, memory-mapped view of a shards directory; `sample(i)` is the i-th (L+1)-token window."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index_path = self.directory / INDEX
        if not index_path.is_file():
            raise UsageError(f"{self.directory}: not a shards directory (no {INDEX})")
        if not (artifacts.read_manifest(self.directory) or {}).get("complete"):
            raise UsageError(f"{self.directory}: shards are incomplete (no complete fournil.json); rebuild them")
        self.index = json.loads(index_path.read_text(encoding="utf-8"))
        self.seq_len: int = self.index["seq_len"]
        self.vocab_size: int = self.index["vocab_size"]
        self.dtype = np.dtype(self.index["dtype"])
        self._streams = []
        for shard in self.index["shards"]:
            path = self.directory / shard["file"]
            if not path.is_file():
                raise UsageError(f"{self.directory}: shard {shard['file']} listed in {INDEX} is missing")
            if path.stat().st_size != shard["tokens"] * self.dtype.itemsize:
                raise UsageError(f"{path}: size does not match {INDEX} (truncated or rewritten?)")
            self._streams.append(_memmap(path, self.dtype))
        self._offsets = np.cumsum([0] + [s["samples"] for s in self.index["shards"]])

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def sample(self, i: int) -> np.ndarray:
        shard = int(np.searchsorted(self._offsets, i, side="right") - 1)
        k = i - int(self._offsets[shard])
        return np.asarray(self._streams[shard][k * self.seq_len : k * self.seq_len + self.seq_len + 1])

    @property
    def languages(self) -> list[str]:
        return sorted(self.index.get("validation", {}))

    def validation(self, language: str) -> tuple[np.ndarray, int]:
        """The held-out token stream of `language` and the UTF-8 bytes of the text behind it."""
        entry = self.index["validation"][language]
        return _memmap(self.directory / entry["file"], self.dtype), entry["bytes"]


def _write_array(path: Path, *arrays: np.ndarray) -> None:
    """Raw bytes through Python's file object: a full disk raises OSError with its errno (ENOSPC, EFBIG), where
    `ndarray.tofile` reports only "N requested and M written"."""
    with open(path, "wb") as f:
        for array in arrays:
            f.write(np.ascontiguousarray(array).data)


def _memmap(path: Path, dtype: np.dtype) -> np.ndarray:
    """np.memmap refuses empty files; an empty stream is a valid (if useless) stream."""
    return np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.zeros(0, dtype)
