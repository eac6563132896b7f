"""`fournil corpus pack`: a corpus directory + a tokenizer directory → packed training shards.

The tokenizer is read as an artifact (its tokenizer.json, with the `tokenizers` library), never through
`fournil.tokenizer`, which is a later stage. Validation documents (per language) are chosen by a seeded hash of
their ids before mixing, so they are never in the training stream; the mix is planned again from the measured
token counts, printed, then applied (repeats per source), and the training documents are shuffled by the seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from fournil import artifacts
from fournil.console import UsageError, track
from fournil.corpus.config import CATEGORIES
from fournil.corpus.mix import format_plan, plan_mix, repeats
from fournil.corpus.pipeline import DOCS, iter_jsonl
from fournil.corpus.shards import ShardWriter

log = logging.getLogger(__name__)
VAL_LANGUAGES = ("fr", "en")
MAX_VAL_FRACTION = 10  # at most 1/10 of a language's documents are held out, so a small corpus still trains


def load_tokenizer(path: Path):
    """(tokenizers.Tokenizer, eos id, sha256 of tokenizer.json) from a tokenizer directory or file."""
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"{path}: no tokenizer.json (give a tokenizer directory written by `fournil tokenizer train`)")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as exc:  # tokenizers raises a bare Exception for bad JSON or an unknown model
        raise UsageError(f"{file}: not a valid tokenizer.json: {exc}") from exc
    eos_token = "</s>"
    config_file = file.parent / "tokenizer_config.json"
    if config_file.is_file():
        try:
            tok_config = json.loads(config_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise UsageError(f"{config_file}: not valid JSON: {exc}") from exc
        eos = tok_config.get("eos_token", eos_token) if isinstance(tok_config, dict) else None
        eos_token = eos.get("content", eos_token) if isinstance(eos, dict) else eos
        if not isinstance(eos_token, str):
            raise UsageError(f"{config_file}: eos_token must be a string (or {{content: …}}), got {eos_token!r}")
    eos_id = tok.token_to_id(eos_token)
    if eos_id is None:
        raise UsageError(f"{file}: the tokenizer has no {eos_token!r} token to put between documents")
    return tok, eos_id, artifacts.sha256_file(file)


def _rank(seed: int, doc_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}\0{doc_id}".encode(), digest_size=8).digest()


def encode(tok, texts: list[str], batch: int = 1024) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for i in range(0, len(texts), batch):
        out += [np.asarray(e.ids, dtype=np.int64) for e in tok.encode_batch(texts[i:i + batch],
                                                                             add_special_tokens=False)]
    return out


def pack(corpus: Path, tokenizer: Path, out: Path, *, seq_len: int = 2048, seed: int | None = None,
         val_docs: int | None = None, tokens_per_shard: int = 1 << 24) -> dict:
    corpus, out = Path(corpus), Path(out)
    manifest = artifacts.read_manifest(corpus)
    if not (manifest or {}).get("complete"):
        raise UsageError(f"{corpus}: not a complete corpus directory (run `fournil corpus run` first)")
    config = manifest.get("config", {})
    seed = config.get("seed", 0) if seed is None else seed
    val_docs = config.get("val_docs", 200) if val_docs is None else val_docs
    if seq_len <= 0 or val_docs < 0:
        raise UsageError("--seq-len must be > 0 and --val-docs >= 0")
    tok, eos_id, tok_sha = load_tokenizer(tokenizer)

    docs, validation = [], {}
    for category in CATEGORIES:
        path = corpus / DOCS / f"{category}.jsonl.gz"
        items = list(iter_jsonl([path])) if path.is_file() else []
        n_val = min(val_docs, len(items) // MAX_VAL_FRACTION)
        if category in VAL_LANGUAGES and n_val:
            chosen = set(sorted(range(len(items)), key=lambda i: _rank(seed, items[i]["id"]))[:n_val])
            validation[category] = [items[i] for i in sorted(chosen)]
            items = [d for i, d in enumerate(items) if i not in chosen]
        docs += [(category, d) for d in items]
    ids = encode(tok, [d["text"] for _, d in track(docs, "tokenising")])

    sources = {d["source"]: c for c, d in docs}
    tokens = {s: 0 for s in sources}
    for (_, d), toks in zip(docs, ids, strict=True):
        tokens[d["source"]] += len(toks) + 1  # + EOS
    weights = {s: config.get("sources", {}).get(s, {}).get("weight", 1.0) for s in sources}
    plan = plan_mix(tokens, sources, weights, config.get("mix") or {c: 1.0 for c in CATEGORIES},
                    config.get("max_epochs", 4.0))
    plan["unit"] = "tokens"
    for line in format_plan(plan):
        log.info("%s", line)

    order: list[int] = []
    for source in sorted(sources):
        members = [i for i, (_, d) in enumerate(docs) if d["source"] == source]
        copies = repeats([docs[i][1]["id"] for i in members], [len(ids[i]) + 1 for i in members],
                         plan["sources"][source]["factor"], seed)
        for i, n in zip(members, copies, strict=True):
            order += [i] * n
    order = [order[j] for j in np.random.default_rng(seed).permutation(len(order))]

    writer = ShardWriter(out, seq_len=seq_len, vocab_size=tok.get_vocab_size(), eos_id=eos_id,
                         tokenizer_sha256=tok_sha, tokens_per_shard=tokens_per_shard)
    for i in track(order, "packing"):
        category, doc = docs[i]
        writer.add(ids[i], category, n_bytes=len(doc["text"].encode()))
    for language, items in validation.items():
        encoded = encode(tok, [d["text"] for d in items])
        writer.add_validation(language, [(e, len(d["text"].encode())) for e, d in zip(encoded, items, strict=True)])
    return writer.close(corpus=str(corpus), corpus_config_sha256=manifest.get("config_sha256"), seed=seed,
                        mix=plan)
