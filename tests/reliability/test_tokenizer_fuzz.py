"""Tokenizer fuzzing: arbitrary Unicode (controls, NUL, emoji, combining marks, every plane) encodes and decodes
back to itself without a crash; hostile tokenizer files are refused with a message, never a traceback."""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fournil.console import UsageError

SPACE = "▁"  # U+2581 decodes as a space: the one documented round-trip exception (tests/tokenizer)
SETTINGS = settings(max_examples=200, deadline=None, database=None)

# every code point but surrogates (not encodable as UTF-8, so no text file can hold one)
any_char = st.characters(exclude_categories=("Cs",))
hostile_pieces = st.sampled_from(["\x00", "\x01", "\x7f", "\x1b[31m", "\u0301", "e\u0301\u0302\u0303", "\u200d",
                                  "👩‍👩‍👧‍👦", "🏳️‍🌈", "\ufeff", "\u202e", "\U0010fffd", "\r", "\r\n", "\t",
                                  "\u2028", "<s>", "</s", "<0x41>", "<unk>", " " * 17, "\n" * 9])
texts = st.lists(st.one_of(st.text(any_char, max_size=16), hostile_pieces), max_size=10).map("".join).filter(
    lambda t: SPACE not in t)


@pytest.fixture(scope="module")
def tok():
    from fournil.tokenizer.train import parse_inputs, train
    from tests.tokenizer.tokenizer_data import TEXT_SPECS, fixture_config

    return train(fixture_config(), parse_inputs(TEXT_SPECS))[0]


@SETTINGS
@given(texts)
def test_round_trip_on_arbitrary_unicode(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    specials = {tok.bos_id, tok.eos_id, tok.pad_id}
    if not any(s in text for s in ("<s>", "</s>", "<pad>", "<unk>", "<|")):  # a special's text is its token
        assert not specials & set(ids)
    assert tok.decode(ids) == text


@SETTINGS
@given(st.lists(texts, max_size=6))
def test_batch_encoding_equals_one_by_one(tok, batch):
    assert tok.encode_batch(batch, bos=True, eos=True) == [tok.encode(t, bos=True, eos=True) for t in batch]


@SETTINGS
@given(st.data())
def test_decoding_any_valid_ids_never_raises(tok, data):
    ids = data.draw(st.lists(st.integers(0, tok.vocab_size - 1), max_size=64))
    assert isinstance(tok.decode(ids), str) and isinstance(tok.decode(ids, skip_special=True), str)


@pytest.mark.parametrize("content", [
    b"", b"not json", b"{}", b'{"model": {"type": "BPE"}}', b'{"model": {"type": "Nope", "vocab": {}}}',
    b"\xff\xfe\x00garbage", json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": [1, 2]}}).encode(),
])
def test_a_hostile_tokenizer_json_is_a_usage_error(tmp_path, content):
    from fournil.tokenizer.bpe import Tokenizer

    (tmp_path / "tokenizer.json").write_bytes(content)
    with pytest.raises(UsageError, match=r"tokenizer\.json"):
        Tokenizer.load(tmp_path)


@pytest.mark.parametrize(("tokenizer_json", "config"), [
    (b"not json", None),
    (None, b"{not json"),
    (None, json.dumps({"eos_token": 42}).encode()),
    (None, json.dumps({"eos_token": ["</s>"]}).encode()),
    (None, json.dumps({"eos_token": {"content": None}}).encode()),
    (None, json.dumps(["eos_token"]).encode()),
])
def test_pack_refuses_a_hostile_tokenizer_directory(tok, tmp_path, tokenizer_json, config):
    """`corpus pack` reads the tokenizer as an artifact; a broken one is a UsageError naming the file."""
    from fournil.corpus.pack import load_tokenizer

    (tmp_path / "tokenizer.json").write_bytes(tokenizer_json or tok.to_json().encode())
    if config is not None:
        (tmp_path / "tokenizer_config.json").write_bytes(config)
    with pytest.raises(UsageError, match=r"tokenizer(_config)?\.json"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize(("name", "content", "message"), [
    ("deep.jsonl", b"[" * 5000 + b"\n", r"deep.jsonl:1: not valid JSON: nested too deeply"),
    ("surrogate.jsonl", b'{"text": "ok"}\n{"text": "half \\ud83d"}\n', r"surrogate.jsonl:2: lone UTF-16 surrogate"),
    ("bad.jsonl", b'{"text": "ok"}\n{"text": \n', r"bad.jsonl:2: not valid JSON"),
    ("list.jsonl", b"[1, 2]\n", r"list.jsonl:1: expected an object"),
    ("cut.jsonl.gz", gzip.compress(b'{"text": "ok"}\n' * 200)[:-20], r"cut.jsonl.gz: cannot read"),
    ("latin1.txt", "café crème\n".encode("latin-1"), r"latin1.txt: cannot read"),
])
def test_hostile_tokenizer_training_text_is_a_usage_error_with_file_and_line(tmp_path, name, content, message):
    """`fournil tokenizer train --text` refuses bad input naming it (a lone surrogate crashed the trainer before)."""
    from fournil.tokenizer.train import read_documents

    (tmp_path / name).write_bytes(content)
    with pytest.raises(UsageError, match=message):
        list(read_documents(tmp_path / name))
