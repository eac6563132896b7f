"""Properties: any text decodes back to itself, specials never split, SentencePiece agrees on arbitrary text."""

from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fournil.tokenizer.verify import is_sentencepiece_exception  # noqa: E402

SPACE = "▁"  # U+2581 in the input decodes as a space: the one documented round-trip exception
SPECIALS = ["<|im_start|>", "<|im_end|>", "<s>", "</s>", "<|reserved_0|>"]

pieces_of_text = st.sampled_from([
    " ", "  ", "\n", "\n\n", "\t", "\r\n", "\x00", "œ", "Œ", "’", "'", "«\u202f", "»", "é", "e\u0301", "ç",
    "Bonjour", "the", "d’", "l'", "2024", "½", "😀", "🇫🇷", "👩‍🍳", "日本語", "한국어", "\u200b", "\ufeff",
])
texts = st.lists(st.one_of(st.text(max_size=20), pieces_of_text), max_size=12).map("".join).filter(
    lambda t: SPACE not in t)


@settings(max_examples=300, deadline=None, database=None)
@given(texts)
def test_decode_encode_is_identity(tok, text):
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None, database=None)
@given(texts, st.sampled_from(SPECIALS), texts)
def test_special_tokens_never_split(tok, left, special, right):
    ids = tok.encode(left + special + right)
    special_id = tok.piece_to_id(special)
    assert ids.count(special_id) == 1 + (left + right).count(special)
    assert tok.decode(ids) == left + special + right


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=40))
def test_sentencepiece_agrees_on_arbitrary_text(tok, tok_dir, text):
    sentencepiece = pytest.importorskip("sentencepiece")
    sp = _sp(tok_dir, sentencepiece)
    if not is_sentencepiece_exception(tok, text):
        assert sp.encode(text) == tok.encode(text)


_cache: dict = {}


def _sp(tok_dir, sentencepiece):
    if tok_dir not in _cache:
        _cache[tok_dir] = sentencepiece.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))
    return _cache[tok_dir]


def test_one_megabyte_lines(tok):
    for text in ("œuf " * 250_000, "é" * 1_000_000, "日本" * 500_000):
        assert tok.decode(tok.encode(text)) == text


def test_u2581_is_the_documented_exception(tok):
    assert tok.decode(tok.encode("a▁b")) == "a b"
