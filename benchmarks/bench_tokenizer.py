"""Tokenizer benchmark: fertility of a tokenizer trained on the embedded sample corpus against Mistral and
SmolLM2 on held-out French and English, and our encode path's throughput against `tokenizers` called directly.

Held out: every 10th French and English document of the sample corpus (never seen in training).
Targets (issue #5): French tokens/word no worse than Mistral's 32k tokenizer; FR/EN ratio ≤ 1.10.
"""

from __future__ import annotations

import gzip
import json
import statistics
import tempfile
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "fournil" / "corpus" / "sample"
HOLD_OUT = 10  # every 10th document is evaluation text
REPEATS = 5


def _split(category: str, tmp: Path) -> tuple[Path, list[str]]:
    """Write the training part of a sample file to `tmp`; return it and the held-out documents."""
    train_path = tmp / f"{category}.jsonl"
    held = []
    with gzip.open(SAMPLE / f"{category}.jsonl.gz", "rt", encoding="utf-8") as f, open(train_path, "w") as out:
        for i, line in enumerate(f):
            if i % HOLD_OUT == HOLD_OUT - 1 and category != "code":
                held.append(json.loads(line)["text"])
            else:
                out.write(line)
    return train_path, held


def _throughput(fn, texts: list[str]) -> float:
    start = time.perf_counter()
    n = fn(texts)
    return n / (time.perf_counter() - start)


def run() -> list[dict]:
    from fournil.tokenizer.config import TokenizerConfig
    from fournil.tokenizer.report import fertility, load_encoder, mistral_models, smollm2_gguf
    from fournil.tokenizer.train import train

    if not (SAMPLE / "fr.jsonl.gz").is_file():
        return []
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs, held = {}, {}
        for category in ("fr", "en", "code"):
            path, docs = _split(category, tmp)
            inputs[category] = [path]
            if docs:
                held[category] = docs
        config = TokenizerConfig(vocab_size=32000, weights={"fr": 1.0, "en": 1.0, "code": 0.1})
        tok, _ = train(config, inputs)
        tok_dir = tmp / "tok"
        from fournil.tokenizer.export import save

        save(tok, tok_dir, sentencepiece=False)

        # throughput: the same tokenizers.Tokenizer, through our wrapper and directly; interleaved, median
        texts = held["fr"] + held["en"]
        hf = tok.hf

        def ours_single(t):
            return sum(len(tok.encode(x)) for x in t)

        def direct_single(t):
            return sum(len(hf.encode(x, add_special_tokens=False).ids) for x in t)

        def ours_batch(t):
            return sum(map(len, tok.encode_batch(t)))

        def direct_batch(t):  # the same output as ours: one Python list of ids per text
            return sum(map(len, [e.ids for e in hf.encode_batch_fast(t, add_special_tokens=False)]))

        for name, ours_fn, direct_fn in (("encode one text at a time", ours_single, direct_single),
                                         ("encode_batch", ours_batch, direct_batch)):
            a, b = [], []
            for _ in range(REPEATS):
                a.append(_throughput(ours_fn, texts))
                b.append(_throughput(direct_fn, texts))
            results.append({"name": f"tokenizer {name} vs tokenizers direct", "ours": statistics.median(a),
                            "anchor": statistics.median(b), "unit": "tokens/s"})

        texts_eval = {"fr": held["fr"], "en": held["en"]}
        ours = fertility(load_encoder(str(tok_dir)), texts_eval)
        anchors = []
        if "v1" in mistral_models():
            anchors.append(("mistral-v1 (32k)", "mistral:v1"))
        if smollm2_gguf() is not None:
            anchors.append(("smollm2 (49k)", "smollm2"))
        for label, spec in anchors:
            other = fertility(load_encoder(spec), texts_eval)
            for lang in ("fr", "en"):
                results.append({"name": f"fertility {lang} vs {label}",
                                "ours": ours["languages"][lang]["tokens_per_word"],
                                "anchor": other["languages"][lang]["tokens_per_word"], "unit": "tokens/word"})
            results.append({"name": f"FR/EN fertility ratio vs {label}", "ours": ours["fr_en_ratio"],
                            "anchor": other["fr_en_ratio"], "unit": "ratio"})
    return results


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:<60} {row['ours']:>12.3f} {row['anchor']:>12.3f} {row['ours'] / row['anchor']:>7.3f} {row['unit']}")
