"""MinHash signatures for datatrove's 4-stage near-duplicate dedup, with cheaper shingles.

Stock `MinhashDedupSignature` shingles run datatrove's `simplify_text` (a per-character diacritics pass) and a
Python SHA-1 per n-gram: ~0.3 MB/s/core, the slowest stage of a run. Here the shingles are lower-cased `\\w+` word
n-grams hashed with xxh64 on bytes (xxhash ≥ 3.8 refuses the `str` that datatrove 0.10.1 passes it); the
signature, buckets, clustering and filtering stay datatrove's.
"""

from __future__ import annotations

import re

import numpy as np
import xxhash
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
