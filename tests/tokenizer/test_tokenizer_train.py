"""Training: id layout, pinned ids, determinism, sampling weights and the errors raised before training starts."""

from __future__ import annotations

import gzip
import json

import pytest
from tokenizer_data import DATA, TEXT_SPECS, VOCAB, fixture_config

from fournil.console import UsageError
from fournil.tokenizer.config import TokenizerConfig
from fournil.tokenizer.train import parse_inputs, read_documents, train

# pinned: a change here changes every shard tokenised with this recipe
PINNED = {
    "Le cœur du métier, c’est la patience.": [560, 380, 364, 406, 494, 388, 463, 580, 282, 380, 365, 433, 395, 688,
                                              505, 436, 284],
    "The heart of the craft is patience.": [493, 515, 713, 426, 393, 696, 326, 340, 465, 688, 505, 436, 284],
    "It's 2024 😀": [594, 340, 570, 367, 288, 286, 288, 68, 367, 256, 175, 168, 144],
}


def test_pinned_ids(tok):
    for text, ids in PINNED.items():
        assert tok.encode(text) == ids, text
    assert tok.pieces("It's 2024 😀")[3:8] == ["▁", "2", "0", "2", "<0x34>"]  # digits one by one; unseen "4" → byte


def test_id_layout(tok):
    vocab = tok.vocab()
    assert len(vocab) == tok.vocab_size == VOCAB
    assert vocab[:6] == ["<unk>", "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"]
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id, tok.im_start_id, tok.im_end_id) == (0, 1, 2, 3, 4, 5)
    assert vocab[6:16] == [f"<|reserved_{i}|>" for i in range(10)]
    assert vocab[16] == "<0x00>" and vocab[16 + 255] == "<0xFF>"
    assert "▁" in vocab[272:]  # learned pieces start after the bytes
    assert tok.encode("bonjour", bos=True, eos=True)[0] == 1 and tok.encode("x", eos=True)[-1] == 2


def test_no_unknown_ever(tok):
    ids = tok.encode("ß∑ 漢字 🥐 \x00 \U0010fffd")
    assert tok.unk_id not in ids


def test_same_input_same_seed_gives_identical_bytes(trained):
    again, _ = train(fixture_config(), parse_inputs(TEXT_SPECS))
    assert again.to_json() == trained[0].to_json()


def test_seed_changes_the_sample(tmp_path):
    inputs = parse_inputs(TEXT_SPECS)
    a, stats_a = train(fixture_config(max_chars=3000, seed=0), inputs)
    b, stats_b = train(fixture_config(max_chars=3000, seed=1), inputs)
    assert stats_a != stats_b and a.to_json() != b.to_json()
    c, _ = train(fixture_config(max_chars=3000, seed=1), inputs)
    assert c.to_json() == b.to_json()


def test_weights_set_each_category_share(trained):
    _, stats = trained
    assert stats["fr"]["weight"] == pytest.approx(1 / 2.2) and stats["code"]["weight"] == pytest.approx(0.2 / 2.2)
    total = sum(s["characters"] for s in stats.values())
    # whole documents are taken, so shares are approximate; English is the scarcest weighted category
    assert stats["en"]["characters"] == stats["en"]["available_characters"]
    assert stats["code"]["characters"] / total == pytest.approx(0.2 / 2.2, abs=0.03)
    assert stats["fr"]["characters"] / total == pytest.approx(1 / 2.2, abs=0.05)


def test_zero_weight_category_is_not_read(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    config = fixture_config()
    config.weights["code"] = 0
    tok, stats = train(config, parse_inputs([*TEXT_SPECS[:2], f"code={bad}"]))
    assert "code" not in stats and tok.vocab_size > 300


def test_documents_from_every_format(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n\n\nthree\n", encoding="utf-8")
    rows = [{"text": "ligne « un »"}, {"fr": "Bonjour", "en": "Hello", "split": "train"}]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "gz œuvre"}) + "\n")
    assert list(read_documents(tmp_path / "a.txt")) == ["one\ntwo", "three"]
    assert list(read_documents(tmp_path / "b.jsonl")) == ["ligne « un »", "Bonjour\nHello"]
    assert list(read_documents(tmp_path / "b.jsonl", side="en")) == ["ligne « un »", "Hello"]
    assert list(read_documents(tmp_path / "c.jsonl.gz")) == ["gz œuvre"]
    assert [p.name for p in parse_inputs([f"fr={tmp_path}"])["fr"]] == ["a.txt", "b.jsonl", "c.jsonl.gz"]


def test_config_check_names_every_bad_field():
    config = TokenizerConfig(vocab_size=100, n_reserved=-1, weights={"fr": -1}, min_frequency=0, max_chars=0)
    fields = {field for field, _ in config.check()}
    assert {"vocab_size", "n_reserved", "weights.fr", "weights", "min_frequency", "max_chars"} <= fields
    assert TokenizerConfig().check() == []


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: [f"fr={p / 'empty.txt'}", f"en={DATA / 'en.txt'}"], "no text for fr"),
    (lambda p: [f"fr={p / 'missing.txt'}", f"en={DATA / 'en.txt'}"], "no such file"),
    (lambda p: [f"fr={p / 'broken.jsonl.gz'}", f"en={DATA / 'en.txt'}"], "cannot read"),
    (lambda p: [f"fr={p / 'latin1.txt'}", f"en={DATA / 'en.txt'}"], "cannot read"),
    (lambda p: [f"fr={p / 'bad.jsonl'}", f"en={DATA / 'en.txt'}"], "bad.jsonl:2: not valid JSON"),
    (lambda p: [f"fr={p / 'notext.jsonl'}", f"en={DATA / 'en.txt'}"], 'expected an object with a "text"'),
    (lambda p: [f"fr={p / 'data.csv'}", f"en={DATA / 'en.txt'}"], "unsupported file type"),
    (lambda p: [f"fr={p}"], "folder holds no"),
    (lambda p: [f"fr={DATA / 'fr.txt'}"], "no --text for en"),
    (lambda p: [*TEXT_SPECS[:2], f"de={DATA / 'fr.txt'}"], "no weight for de"),
    (lambda p: ["fr"], "expected CATEGORY=PATH"),
])
def test_bad_input_fails_before_training(tmp_path, make, message):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    (tmp_path / "broken.jsonl.gz").write_bytes(b"\x1f\x8b\x08garbage")
    (tmp_path / "latin1.txt").write_bytes("crème brûlée".encode("latin-1"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    (tmp_path / "notext.jsonl").write_text('{"content": "x"}\n')
    (tmp_path / "data.csv").write_text("a,b\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    with pytest.raises(UsageError, match=message):
        specs = make(sub if "folder" in message else tmp_path)
        train(TokenizerConfig(vocab_size=VOCAB), parse_inputs(specs))


def test_vocab_smaller_than_bytes_and_specials_is_refused():
    with pytest.raises(UsageError, match=r"vocab_size: 200 is smaller than the 256 byte pieces"):
        train(TokenizerConfig(vocab_size=200), parse_inputs(TEXT_SPECS[:2]))
