"""`fournil corpus pack`: a corpus directory + a tokenizer directory → packed training shards.

The tokenizer is read as an artifact (its tokenizer.json, with the `tokenizers` library), never through
`fournil.tokenizer`, which is a later stage. Validation documents (per language) are chosen by a seeded hash of
their ids before mixing, so they are never in the training stream; the mix is planned again from the measured
token counts, printed, then applied (repeats per source), and the training documents are shuffled by the seed.
It streams (see `pack`): memory does not grow with the corpus, the shards are the same as holding it all.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fournil import artifacts
from fournil.console import FournilError, UsageError, track
from fournil.corpus.config import CATEGORIES
from fournil.corpus.mix import doc_rank, format_plan, plan_mix, repeat_counts
from fournil.corpus.pipeline import DOCS, iter_jsonl
from fournil.corpus.shards import ShardWriter, token_dtype
from fournil.lm.prompt import read_tokenizer

log = logging.getLogger(__name__)
VAL_LANGUAGES = ("fr", "en")
MAX_VAL_FRACTION = 10  # at most 1/10 of a language's documents are held out, so a small corpus still trains
BATCH_DOCS = 256  # documents per encode_batch call …
BATCH_BYTES = 16 << 20  # … or fewer, when they hold this much text (a file of huge documents stays bounded)
CHUNK_TOKENS = 1 << 20  # tokens gathered per step of pass 2


def load_tokenizer(path: Path):
    """(tokenizers.Tokenizer, eos id, sha256 of tokenizer.json) from a tokenizer directory or file."""
    path = Path(path)
    tok = read_tokenizer(path, "give a tokenizer directory written by `fournil tokenizer train`")
    file = path / "tokenizer.json" if path.is_dir() else path
    eos_token = "</s>"
    config_file = file.parent / "tokenizer_config.json"
    if config_file.is_file():
        tok_config = artifacts.read_json(config_file)
        eos = tok_config.get("eos_token", eos_token) if isinstance(tok_config, dict) else None
        eos_token = eos.get("content", eos_token) if isinstance(eos, dict) else eos
        if not isinstance(eos_token, str):
            raise UsageError(f"{config_file}: eos_token must be a string (or {{content: …}}), got {eos_token!r}")
    eos_id = tok.token_to_id(eos_token)
    if eos_id is None:
        raise UsageError(f"{file}: the tokenizer has no {eos_token!r} token to put between documents")
    return tok, eos_id, artifacts.sha256_file(file)


def _encoder(tok):
    """encode_batch_fast (tokenizers ≥ 0.21) skips the character offsets pack never reads: same ids, less work."""
    return getattr(tok, "encode_batch_fast", tok.encode_batch)


@dataclass
class _Documents:
    """Pass 1's result: every document's place in the temporary token file, and the few numbers mixing needs.

    Per document: start (in tokens), size (tokens + EOS), source (index into `sources`), category (index into
    CATEGORIES), UTF-8 bytes, seeded rank (see `mix.doc_rank`), and whether it is held out for validation.
    """

    start: np.ndarray
    size: np.ndarray
    source: np.ndarray
    category: np.ndarray
    n_bytes: np.ndarray
    rank: np.ndarray
    held_out: np.ndarray
    sources: list[str]


def _tokenise(corpus: Path, tok, eos_id: int, dtype: np.dtype, vocab_size: int, seed: int, val_docs: int,
              token_file: Path) -> _Documents:
    """Pass 1: each category's documents, in batches, appended to `token_file` (EOS after each); no text is kept
    past its batch. Validation documents are chosen per language once its file is read: the `n_val` lowest ranks.
    """
    encode_batch = _encoder(tok)
    columns: dict[str, list[np.ndarray]] = {k: [] for k in ("size", "source", "category", "n_bytes", "rank")}
    held_out: list[np.ndarray] = []
    source_codes: dict[str, int] = {}

    def write(future, meta: list[tuple[int, int, int]], category: int, f) -> None:
        ids: list[int] = []
        sizes = np.empty(len(meta), dtype=np.int64)
        for k, e in enumerate(future.result()):
            doc = e.ids
            ids += doc
            ids.append(eos_id)
            sizes[k] = len(doc) + 1
        flat = np.array(ids, dtype=np.int64)
        if flat.size and int(flat.max()) >= vocab_size:
            raise ValueError(f"token id out of range [0, {vocab_size}) in a {CATEGORIES[category]} document")
        f.write(flat.astype(dtype).data)
        m = np.array(meta, dtype=np.uint64).reshape(-1, 3)
        columns["size"].append(sizes)
        columns["source"].append(m[:, 0].astype(np.int32))
        columns["n_bytes"].append(m[:, 1].astype(np.int64))
        columns["rank"].append(m[:, 2])
        columns["category"].append(np.full(len(meta), category, dtype=np.int8))

    # One batch is encoded (tokenizers releases the GIL and uses every core) while this thread writes the one
    # before and reads the one after: parsing JSON and hashing ids cost no tokenising time.
    with open(token_file, "wb") as f, ThreadPoolExecutor(1) as pool:
        inflight: list = []

        def submit(texts: list[str], meta: list[tuple[int, int, int]], category: int) -> None:
            future = pool.submit(encode_batch, texts, add_special_tokens=False)
            while inflight:
                write(*inflight.pop(), f)
            inflight.append((future, meta, category))

        for c, category in enumerate(CATEGORIES):
            path = corpus / DOCS / f"{category}.jsonl.gz"
            first = sum(a.size for a in columns["size"])
            texts: list[str] = []
            meta: list[tuple[int, int, int]] = []
            pending = 0
            for doc in track(iter_jsonl([path]) if path.is_file() else (), f"tokenising {category}"):
                text = doc["text"]
                n_bytes = len(text.encode())
                texts.append(text)
                meta.append((source_codes.setdefault(doc["source"], len(source_codes)), n_bytes,
                             doc_rank(seed, doc["id"])))
                pending += n_bytes
                if len(texts) >= BATCH_DOCS or pending >= BATCH_BYTES:
                    submit(texts, meta, c)
                    texts, meta, pending = [], [], 0
            if texts:
                submit(texts, meta, c)
            while inflight:
                write(*inflight.pop(), f)
            n = sum(a.size for a in columns["size"]) - first
            mask = np.zeros(n, dtype=bool)
            n_val = min(val_docs, n // MAX_VAL_FRACTION)
            if category in VAL_LANGUAGES and n_val:
                ranks = np.concatenate(columns["rank"])[first:]
                mask[np.argsort(ranks, kind="stable")[:n_val]] = True
            held_out.append(mask)
    arrays = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in columns.items()}
    size = arrays["size"].astype(np.int64)
    start = np.cumsum(size) - size
    return _Documents(start=start, size=size, source=arrays["source"].astype(np.int64),
                      category=arrays["category"].astype(np.int64), n_bytes=arrays["n_bytes"].astype(np.int64),
                      rank=arrays["rank"].astype(np.uint64), held_out=np.concatenate(held_out),
                      sources=list(source_codes))


def _order(docs: _Documents, train: np.ndarray, plan: dict, seed: int) -> np.ndarray:
    """The training stream as document indices: each source's repeats, in sorted source order, then shuffled."""
    parts = []
    for source in sorted(plan["sources"]):
        members = train[docs.source[train] == docs.sources.index(source)]
        copies = repeat_counts(docs.rank[members].tolist(), docs.size[members].tolist(),
                               plan["sources"][source]["factor"])
        parts.append(np.repeat(members, copies))
    order = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    return order[np.random.default_rng(seed).permutation(len(order))]


def _write_training(writer: ShardWriter, tokens: np.ndarray, docs: _Documents, order: np.ndarray) -> None:
    """Pass 2: the shuffled documents gathered from the token file, CHUNK_TOKENS at a time."""
    sizes = docs.size[order]
    ends = np.cumsum(sizes)
    a, chunks = 0, []
    while a < order.size:
        b = max(a + 1, int(np.searchsorted(ends, (ends[a - 1] if a else 0) + CHUNK_TOKENS, side="right")))
        chunks.append((a, b))
        a = b
    for a, b in track(chunks, "packing"):
        idx, sz = order[a:b], sizes[a:b]
        local = np.cumsum(sz) - sz  # where each document starts in this chunk
        gather = np.repeat(docs.start[idx] - local, sz) + np.arange(int(sz.sum()))
        writer.add_many(tokens[gather], sz, docs.category[idx], CATEGORIES, docs.n_bytes[idx])


def pack(corpus: Path, tokenizer: Path, out: Path, *, seq_len: int = 2048, seed: int | None = None,
         val_docs: int | None = None, tokens_per_shard: int = 1 << 24) -> dict:
    """Two passes, so memory holds a batch of text and a chunk of tokens, never the corpus: (1) tokenise into a
    temporary flat token file beside the output (removed at the end, also on error), keeping only per-document
    numbers; plan the mix from them; (2) write the shards in the shuffled order from slices of that file."""
    corpus, out = Path(corpus), Path(out)
    manifest = artifacts.read_manifest(corpus)
    if not (manifest or {}).get("complete"):
        raise UsageError(f"{corpus}: not a complete corpus directory (run `fournil corpus run` first)")
    config = manifest.get("config", {})
    seed = config.get("seed", 0) if seed is None else seed
    val_docs = config.get("val_docs", 200) if val_docs is None else val_docs
    if seq_len <= 0 or val_docs < 0:
        raise UsageError("--seq-len must be > 0 and --val-docs >= 0")
    if tokens_per_shard <= seq_len:  # a shard must hold a whole sample (seq_len + 1 tokens), or it trains on nothing
        raise UsageError(f"--tokens-per-shard {tokens_per_shard} must exceed --seq-len {seq_len}")
    tok, eos_id, tok_sha = load_tokenizer(tokenizer)
    vocab_size = tok.get_vocab_size()
    dtype = token_dtype(vocab_size)
    out.mkdir(parents=True, exist_ok=True)
    with artifacts.scratch_dir(out, "pack") as scratch:  # one a killed run left behind goes too
        token_file = scratch / "tokens.bin"
        try:
            docs = _tokenise(corpus, tok, eos_id, dtype, vocab_size, seed, val_docs, token_file)
        except OSError as exc:
            if exc.errno in artifacts.NO_SPACE:
                raise FournilError(f"cannot write the temporary token file in {out}: {exc.strerror}; free some "
                                   "space and rerun (it needs 2-4 bytes per token)") from exc
            raise
        tokens = np.memmap(token_file, dtype=dtype, mode="r") if docs.size.size else np.zeros(0, dtype)
        train = np.flatnonzero(~docs.held_out)
        src = docs.source[train]
        codes, first = np.unique(src, return_index=True)
        last = src.size - 1 - np.unique(src[::-1], return_index=True)[1]
        totals = np.zeros(len(docs.sources), dtype=np.int64)
        np.add.at(totals, src, docs.size[train])
        # first-appearance order, and a source's last category wins: what the dict over documents gave before
        sources = {docs.sources[codes[k]]: CATEGORIES[docs.category[train[last[k]]]] for k in np.argsort(first)}
        tokens_by_source = {s: int(totals[docs.sources.index(s)]) for s in sources}
        weights = {s: config.get("sources", {}).get(s, {}).get("weight", 1.0) for s in sources}
        plan = plan_mix(tokens_by_source, sources, weights, config.get("mix") or {c: 1.0 for c in CATEGORIES},
                        config.get("max_epochs", 4.0))
        plan["unit"] = "tokens"
        for line in format_plan(plan):
            log.info("%s", line)
        order = _order(docs, train, plan, seed)

        writer = ShardWriter(out, seq_len=seq_len, vocab_size=vocab_size, eos_id=eos_id, tokenizer_sha256=tok_sha,
                             tokens_per_shard=tokens_per_shard)
        _write_training(writer, tokens, docs, order)
        for c, language in enumerate(CATEGORIES):
            held = np.flatnonzero(docs.held_out & (docs.category == c))
            if held.size:
                writer.add_validation(language, [(tokens[docs.start[i]:docs.start[i] + docs.size[i] - 1],
                                                  int(docs.n_bytes[i])) for i in held])
        del tokens
        return writer.close(corpus=str(corpus), corpus_config_sha256=manifest.get("config_sha256"), seed=seed,
                            mix=plan)


def count_tokens(corpus: Path, tokenizer: Path) -> dict:
    """Exact token counts of a corpus directory's docs/ per category and per source, for the datasheet when no
    shards exist yet: every document (held-out ones too), no EOS, before mixing. Streams in batches like `pack`."""
    tok, _, tok_sha = load_tokenizer(tokenizer)
    encode_batch = _encoder(tok)
    categories: dict[str, int] = {}
    sources: dict[str, int] = {}

    def count(batch: list[dict], category: str) -> None:
        for doc, e in zip(batch, encode_batch([d["text"] for d in batch], add_special_tokens=False), strict=True):
            categories[category] = categories.get(category, 0) + len(e.ids)
            sources[doc["source"]] = sources.get(doc["source"], 0) + len(e.ids)
        batch.clear()

    for category in CATEGORIES:
        path = Path(corpus) / DOCS / f"{category}.jsonl.gz"
        if not path.is_file():
            continue
        categories[category] = 0
        batch: list[dict] = []
        for doc in track(iter_jsonl([path]), f"counting tokens {category}"):
            batch.append(doc)
            if len(batch) >= BATCH_DOCS:
                count(batch, category)
        count(batch, category)
    return {"tokenizer": str(tokenizer), "tokenizer_sha256": tok_sha, "categories": categories, "sources": sources}
