"""Export: transformers loads the directory offline with our exact ids; SentencePiece gives our ids too."""

from __future__ import annotations

import json
import random

import pytest
from tokenizer_data import corpus_lines

from fournil.artifacts import read_manifest

transformers = pytest.importorskip("transformers")
sentencepiece = pytest.importorskip("sentencepiece")

EXTRA = [
    "", " ", "  deux espaces", "fin ", "\n\nParagraphe\n", "a\tb\r\nc", "L’œuvre d’Œdipe", "l'apostrophe droite",
    "1 234,56 €", "naïve façade", "e\u0301le\u0300ve", "日本語のテキスト", "🥐🇫🇷👩‍🍳", "NUL\x00byte", "x" * 5000,
    "Bonjour<|im_end|>", "a <|im_start|> b", "user<|im_end|>\n<|im_start|>assistant\n", "<|reserved_3|>",
]


@pytest.fixture(scope="module")
def auto(tok_dir):
    return transformers.AutoTokenizer.from_pretrained(str(tok_dir))


@pytest.fixture(scope="module")
def sp(tok_dir):
    return sentencepiece.SentencePieceProcessor(model_file=str(tok_dir / "tokenizer.model"))


def test_directory_layout_and_manifest_last(tok_dir):
    names = {p.name for p in tok_dir.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
            "tokenizer.model", "fournil.json"} <= names
    manifest = read_manifest(tok_dir)
    assert manifest["complete"] is True and manifest["producer"] == "fournil.tokenizer"
    assert manifest["special_ids"]["<|im_end|>"] == 5 and manifest["test"] is True
    newest = max(tok_dir.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == "fournil.json"
    specials = json.loads((tok_dir / "special_tokens_map.json").read_text())
    assert specials["bos_token"] == "<s>" and specials["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]


def test_transformers_gives_our_ids(tok, auto):
    texts = corpus_lines() + EXTRA
    assert auto(texts, add_special_tokens=False)["input_ids"] == tok.encode_batch(texts)
    assert auto("Bonjour")["input_ids"] == tok.encode("Bonjour", bos=True)  # BOS added by default, as Llama
    assert (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id, auto.unk_token_id) == (1, 2, 3, 0)
    ids = tok.encode("L’œuvre d’Œdipe 🥐")
    assert auto.decode(ids) == tok.decode(ids) == "L’œuvre d’Œdipe 🥐"


def test_chat_template_is_chatml(tok, auto):
    messages = [{"role": "user", "content": "Bonjour !"}, {"role": "assistant", "content": "Salut."}]
    text = auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<s><|im_start|>user\nBonjour !<|im_end|>\n<|im_start|>assistant\nSalut.<|im_end|>\n" \
                   "<|im_start|>assistant\n"
    ids = tok.encode(text)
    assert ids[:2] == [1, 4] and ids.count(4) == 3 and ids.count(5) == 2


def test_sentencepiece_gives_our_ids(tok, sp):
    texts = corpus_lines() + [t for t in EXTRA if not t.startswith("<|")]
    rng = random.Random(0)
    joined = "\n".join(corpus_lines())
    for _ in range(3000):  # random slices: starts and ends inside words, spaces, digits, newlines
        start = rng.randrange(len(joined))
        texts.append(joined[start:start + rng.randrange(1, 120)])
    assert sp.encode(texts) == tok.encode_batch(texts)
    assert sp.get_piece_size() == tok.vocab_size
    assert [sp.id_to_piece(i) for i in range(tok.vocab_size)] == tok.vocab()
    for text in texts[:200]:
        assert sp.decode(tok.encode(text)) == text


def test_sentencepiece_documented_exceptions(tok, sp):
    # 1. a text that starts with a special token: SentencePiece's dummy prefix puts "▁" before it; we do not
    text = "<|im_start|>user"
    assert tok.encode(text)[0] == 4
    assert sp.encode(text)[:2] == [tok.piece_to_id("▁"), 4]
    assert sp.encode(text)[1:] == tok.encode(text)
    # 2. literal control-token text: HF (like Llama's fast tokenizer) matches "</s>", SentencePiece reads characters
    assert tok.encode("fin</s>")[-1] == 2 and 2 not in sp.encode("fin</s>")
