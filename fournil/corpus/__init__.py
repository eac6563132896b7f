"""Corpus stage: cleaned FR/EN/code documents and aligned EN-FR pairs for the later stages (pipeline.py runs
the chain on datatrove, pack.py writes token shards, report.py the datasheet).

This module exposes the embedded sample corpus (`sample/`, see its README.md and MANIFEST.json), which lets the
demo and the tests run offline. It is rebuilt by `scripts/build_sample_corpus.py`. Kept torch-free.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

SAMPLE_DIR = Path(__file__).parent / "sample"
CATEGORIES = ("fr", "en", "code", "parallel")


def iter_sample(category: str) -> Iterator[dict]:
    """Yield the sample's records of one category, in file order.

    fr/en/code records are {"text", "source"}; parallel records are {"en", "fr", "source", "split"}.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown sample category {category!r}; allowed: {', '.join(CATEGORIES)}")
    with gzip.open(SAMPLE_DIR / f"{category}.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)
