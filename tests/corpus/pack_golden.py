"""A fixed small corpus directory for `corpus pack`, and the golden shards the in-memory implementation wrote.

The golden (`golden/pack.json`: index.json plus the sha256 of every shard) was recorded with the pack of
before the streaming rewrite; the streaming pack must reproduce it byte for byte. Regenerate it only for an
intended format change: `python tests/corpus/pack_golden.py`.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
GOLDEN = HERE / "golden" / "pack.json"
TOKENIZER = HERE / "golden" / "tokenizer"  # committed: BPE training is not promised to be stable across versions
PACK_ARGS = {"seq_len": 64, "tokens_per_shard": 3000}
SEEDS = (None, 11)  # the recipe's seed (3) and an override


def _records(category: str, n: int, skip: int = 0) -> list[dict]:
    import itertools

    from fournil.corpus import iter_sample

    out = []
    for r in itertools.islice(iter_sample(category), skip, skip + n):
        text = r["text"] if category != "parallel" else f"{r['en']}\n{r['fr']}"
        out.append(text[:1200])
    return out


def build_corpus(root: Path) -> Path:
    """fr from two sources (weights 1 and 0.5), en, code upsampled by a fractional factor, parallel; 3
    validation documents per language. Written the way `corpus run` writes docs/ (by id), with a manifest."""
    from fournil import artifacts

    layout = {"fr": [("fr-a", 40), ("fr-b", 25)], "en": [("en-a", 50)], "code": [("code-a", 9)],
              "parallel": [("par-a", 30)]}
    for category, sources in layout.items():
        docs, skip = [], 0
        for source, n in sources:
            for i, text in enumerate(_records(category, n, skip)):
                docs.append({"text": text, "id": f"{source}/{i:04d}", "source": source, "lang": category})
            skip += n
        docs.sort(key=lambda d: d["id"])
        path = root / "docs" / f"{category}.jsonl.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(path, "wt", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
    config = {"seed": 3, "val_docs": 3, "max_epochs": 2.5, "mix": {"fr": 0.4, "en": 0.4, "code": 0.15, "parallel": 0.05},
              "sources": {"fr-b": {"weight": 0.5}}}
    artifacts.write_manifest(root, producer="test", config=config, config_sha256="golden")
    return root


def shard_digests(directory: Path) -> dict:
    from fournil import artifacts

    return {p.name: artifacts.sha256_file(p) for p in sorted(directory.glob("*.bin"))}


def manifest_fields(directory: Path) -> dict:
    """The manifest without what changes from run to run (time, version, the corpus path)."""
    from fournil import artifacts

    manifest = artifacts.read_manifest(directory) or {}
    return {k: v for k, v in manifest.items() if k not in ("created", "fournil_version", "corpus")}


def record(tmp: Path) -> dict:
    from fournil.corpus.pack import pack

    corpus = build_corpus(tmp / "corpus")
    golden = {}
    for seed in SEEDS:
        out = tmp / f"shards-{seed}"
        index = pack(corpus, TOKENIZER, out, seed=seed, **PACK_ARGS)
        golden[str(seed)] = {"index": (out / "index.json").read_text(encoding="utf-8"), "sha256": shard_digests(out),
                             "returned": json.loads(json.dumps(index)), "manifest": manifest_fields(out)}
    return golden


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(HERE))
    from corpus_fixtures import tiny_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        if not (TOKENIZER / "tokenizer.json").is_file():
            texts = [t for c in ("fr", "en", "code", "parallel") for t in _records(c, 120)]
            tiny_tokenizer(TOKENIZER, texts)
        GOLDEN.write_text(json.dumps(record(Path(tmp)), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}")
