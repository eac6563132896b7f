"""MinHash signatures for datatrove's 4-stage near-duplicate dedup, with cheaper shingles.

Stock `MinhashDedupSignature` shingles run datatrove's `simplify_text` (a per-character diacritics pass) and a
Python SHA-1 per n-gram: ~0.3 MB/s/core, the slowest stage of a run. Here the shingles are lower-cased `\\w+` word
n-grams hashed with xxh64 on bytes (xxhash ≥ 3.8 refuses the `str` that datatrove 0.10.1 passes it); the
signature, buckets, clustering and filtering stay datatrove's.

Exact dedup (ours, see docs/corpus.md for why not datatrove's) is split the same way: each dedup task writes its
documents sorted by id and their exact keys sorted by (key, id) as runs on disk (`SortedRuns`), and `finalise`
merges them (`fournil/corpus/runs.py`) with memory bounded by the run size, not the corpus.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import xxhash
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
from datatrove.utils.word_tokenizers import WordTokenizer

_WORD = re.compile(r"\w+")


class FastWords(WordTokenizer):
    """A \\w+ word splitter with no spaCy, for steps that only need stable word boundaries."""

    def word_tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [text]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [(0, len(text))]


class Signature(MinhashDedupSignature):
    """datatrove's MinHash stage 1 with lower-cased word n-gram shingles hashed by xxh64."""

    name = "🎯 MinHash stage 1 (fournil shingles)"

    def get_shingles(self, text: str) -> np.ndarray:
        words = _WORD.findall(text.lower())
        n = self.config.n_grams
        hashes = (xxhash.xxh64_intdigest(" ".join(words[i:i + n]).encode()) for i in range(len(words) - n + 1))
        return np.fromiter(hashes, dtype=np.uint64).reshape((-1, 1))


def id_key(doc_id: str) -> bytes:
    """A document id as a sort key: UTF-8 bytes order is the code point order of `sorted(ids)`."""
    return doc_id.encode("utf-8", "surrogatepass")


class SortedRuns(PipelineStep):
    """The dedup stage's last step: this task's documents as runs sorted by id (`<rank>-docs-*.run`, each record
    the line datatrove's JsonlWriter would write) and their exact-duplicate keys as runs sorted by (key, id)
    (`<rank>-keys-*.run`). `finalise` merges them: nothing holds every document, on any task."""

    type = "💽 - WRITER"
    name = "🗂 fournil sorted runs"

    def __init__(self, folder: str, run_bytes: int | None = None):
        super().__init__()
        self.folder, self.run_bytes = folder, run_bytes

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        import orjson
        from datatrove.pipeline.writers.jsonl import _json_default

        from fournil.corpus.pipeline import exact_key
        from fournil.corpus.runs import RunWriter

        folder = Path(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(f"{rank:05d}-*"):  # a killed attempt's runs: this attempt writes its own
            stale.unlink()
        docs = RunWriter(folder, f"{rank:05d}-docs-", self.run_bytes)
        keys = RunWriter(folder, f"{rank:05d}-keys-", self.run_bytes)
        for doc in data or ():
            with self.track_time():
                record = {k: v for k, v in dataclasses.asdict(doc).items() if v}  # JsonlWriter's default adapter
                key = id_key(doc.id)
                line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE, default=_json_default)
                docs.add(key, bytes(memoryview(line)))  # a copy: orjson's bytes keep a buffer many times their size
                keys.add(exact_key(doc.text) + key)
                self.stat_update("documents")
        docs.close()
        keys.close()
        return
        yield  # a generator, as datatrove runs steps
