"""Training: read text per category, sample it to the configured weights, learn BPE pieces, build the tokenizer.

BPE only sees word counts, so a category's weight is its share of the sampled characters. Sampling is by whole
documents, in an order fixed by the seed, so the same seed and input give byte-identical tokenizer.json files.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fournil.console import UsageError, status, track
from fournil.corpus.text import encodable
from fournil.tokenizer.config import N_BYTES, TokenizerConfig

if TYPE_CHECKING:
    from fournil.tokenizer.bpe import Tokenizer

log = logging.getLogger(__name__)

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz")


def parse_inputs(specs: Sequence[str]) -> dict[str, list[Path]]:
    """`["fr=a.txt", "en=dir/", "fr=b.jsonl.gz"]` → {category: [files]}; a folder means its .txt/.jsonl(.gz) files."""
    inputs: dict[str, list[Path]] = {}
    for spec in specs:
        category, sep, path_text = spec.partition("=")
        if not sep or not category or not path_text:
            raise UsageError(f"--text {spec!r}: expected CATEGORY=PATH, e.g. fr=corpus/fr.jsonl.gz")
        inputs.setdefault(category, []).extend(input_files(Path(path_text)))
    return inputs


def input_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
        if not files:
            raise UsageError(f"{path}: folder holds no {', '.join(SUFFIXES)} files")
        return files
    if not path.exists():
        raise UsageError(f"{path}: no such file or folder")
    if not path.name.endswith(SUFFIXES):
        raise UsageError(f"{path}: unsupported file type; expected {', '.join(SUFFIXES)} or a folder of them")
    return [path]


def read_documents(path: Path, skip_test: bool = False, side: str | None = None) -> Iterator[str]:
    """Documents of one file: a jsonl row's "text" (or its "fr" and "en" sides), or a .txt paragraph.

    `skip_test`: leave out rows marked "split": "test", so training never sees evaluation text.
    `side`: for parallel rows, take only this side (`fr=pairs.jsonl` reads the French sentences).
    """
    try:
        if path.name.endswith(".txt"):
            with open(path, encoding="utf-8") as f:
                paragraph: list[str] = []
                for line in f:
                    if line.strip():
                        paragraph.append(line)
                    elif paragraph:
                        yield "".join(paragraph).rstrip("\n")
                        paragraph = []
                if paragraph:
                    yield "".join(paragraph).rstrip("\n")
            return
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: `[[[[…` thousands deep
                    reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
                    raise UsageError(f"{path}:{lineno}: not valid JSON: {reason}") from exc
                text = _row_text(row, side)
                if text and "\\ud" in line.lower() and not encodable(text):  # only a JSON escape makes a surrogate
                    raise UsageError(f"{path}:{lineno}: lone UTF-16 surrogate in the text (a broken \\u escape)")
                if skip_test and isinstance(row, dict) and row.get("split") == "test":
                    continue
                if text is None:
                    raise UsageError(f'{path}:{lineno}: expected an object with a "text" field (or "fr" and "en")')
                if text:
                    yield text
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise UsageError(f"{path}: cannot read: {exc}") from exc


def _row_text(row: object, side: str | None) -> str | None:
    if not isinstance(row, dict):
        return None
    if isinstance(row.get("text"), str):
        return row["text"]
    if side is not None and isinstance(row.get(side), str):
        return row[side]
    if isinstance(row.get("fr"), str) and isinstance(row.get("en"), str):  # a parallel pair: both sides
        return row["fr"] + "\n" + row["en"]
    return None


def category_weights(config: TokenizerConfig, categories: Sequence[str]) -> dict[str, float]:
    """Weights of the categories given, normalised; every mismatch is reported before any file is read."""
    missing = [c for c in categories if c not in config.weights]
    unused = [c for c, w in config.weights.items() if w > 0 and c not in categories]
    problems = []
    if missing:
        problems.append(f"no weight for {', '.join(missing)}: add e.g. --weight {missing[0]}=0.1 "
                        f"(weights now: {_fmt(config.weights)})")
    if unused:
        problems.append(f"weight > 0 but no --text for {', '.join(unused)}: add --text {unused[0]}=PATH "
                        f"or --weight {unused[0]}=0")
    if problems:
        raise UsageError("; ".join(problems))
    total = sum(config.weights[c] for c in categories)
    return {c: config.weights[c] / total for c in categories}


def sample(config: TokenizerConfig, inputs: dict[str, list[Path]]) -> tuple[Iterator[str], dict[str, dict]]:
    """Choose documents so each category gets its weight's share of characters; return them and the counts.

    The total is the largest the scarcest weighted category allows (capped by `max_chars`): nothing is repeated.
    """
    weights = category_weights(config, list(inputs))
    lengths: dict[str, list[tuple[int, array]]] = {}  # category → [(file index, chars per document)]
    available: dict[str, int] = {}
    for category, files in inputs.items():
        if weights[category] == 0:
            continue
        per_file = []
        for i, path in enumerate(track(files, f"indexing {category}")):
            per_file.append((i, array("q", (len(doc) for doc in read_documents(path, True, category)))))
        lengths[category] = per_file
        available[category] = sum(sum(a) for _, a in per_file)
    empty = [c for c, n in available.items() if n == 0]
    if empty:
        raise UsageError(f"no text for {', '.join(empty)}: {', '.join(str(p) for c in empty for p in inputs[c])}")
    total = min(available[c] / weights[c] for c in available)
    if config.max_chars is not None:
        total = min(total, config.max_chars)
    chosen: dict[str, set[tuple[int, int]]] = {}
    stats: dict[str, dict] = {}
    for category, per_file in lengths.items():
        docs = [(i, j, n) for i, a in per_file for j, n in enumerate(a)]
        random.Random(f"{config.seed}/{category}").shuffle(docs)
        quota, taken, picked = weights[category] * total, 0, set()
        for i, j, n in docs:
            if taken >= quota:
                break
            picked.add((i, j))
            taken += n
        chosen[category] = picked
        stats[category] = {"weight": weights[category], "documents": len(picked), "characters": taken,
                           "available_characters": available[category]}

    def documents() -> Iterator[str]:
        for category, picked in chosen.items():
            for i, path in enumerate(inputs[category]):
                wanted = sorted(j for f, j in picked if f == i)
                if not wanted:
                    continue
                want = iter(wanted)
                target = next(want)
                for j, doc in enumerate(read_documents(path, True, category)):
                    if j == target:
                        yield doc
                        target = next(want, -1)
                        if target < 0:
                            break

    n_docs = sum(len(p) for p in chosen.values())
    return track(documents(), "training on", total=n_docs), stats


def train(config: TokenizerConfig, inputs: dict[str, list[Path]]) -> tuple[Tokenizer, dict[str, dict]]:
    """Learn the pieces and return (the final `Tokenizer`, per-category sampling counts)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, trainers

    from fournil.tokenizer.bpe import BYTE_PIECES, SPACE, Tokenizer, build, set_pipeline

    problems = config.check()
    if problems:
        raise UsageError("invalid tokenizer config: " + "; ".join(f"{k}: {m}" for k, m in problems))
    if not inputs:
        raise UsageError("no training text: give --text CATEGORY=PATH (e.g. --text fr=fr.jsonl.gz en=en.txt)")
    specials = config.specials
    n_learned = config.vocab_size - len(specials) - N_BYTES
    documents, stats = sample(config, inputs)
    learner = HFTokenizer(models.BPE(byte_fallback=True))
    set_pipeline(learner)
    trainer = trainers.BpeTrainer(vocab_size=n_learned, min_frequency=config.min_frequency,
                                  show_progress=False, special_tokens=[],
                                  limit_alphabet=min(config.limit_alphabet, n_learned),
                                  initial_alphabet=[SPACE], max_token_length=config.max_piece_length)
    learner.train_from_iterator(documents, trainer=trainer)
    with status("building the tokenizer"):
        reserved = set(specials) | set(BYTE_PIECES)
        learned = sorted(learner.get_vocab().items(), key=lambda kv: kv[1])
        pieces = [p for p, _ in learned if p not in reserved]
        tok = Tokenizer(build(specials, pieces))
    if tok.vocab_size < config.vocab_size:
        log.warning("the text only supports %d of the %d ids asked for (too little text or min_frequency=%d)",
                    tok.vocab_size, config.vocab_size, config.min_frequency)
    return tok, stats


def _fmt(weights: dict[str, float]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in weights.items())
