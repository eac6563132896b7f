"""GGUF: the vocabulary written through `gguf.GGUFWriter` reads back and still encodes to our ids."""

from __future__ import annotations

import pytest
from tokenizer_data import corpus_lines

gguf = pytest.importorskip("gguf")
sentencepiece = pytest.importorskip("sentencepiece")

from fournil.tokenizer.gguf import gguf_metadata, read_metadata, sentencepiece_from_gguf, write_tokenizer  # noqa: E402


def test_metadata_is_plain_data(tok):
    meta = gguf_metadata(tok)
    assert meta["tokenizer.ggml.model"] == "llama" and meta["tokenizer.ggml.pre"] == "default"
    assert meta["tokenizer.ggml.tokens"][:3] == ["<unk>", "<s>", "</s>"]
    assert meta["tokenizer.ggml.token_type"][:6] == [2, 3, 3, 3, 4, 4]  # unknown, control ×3, user-defined ×2
    assert meta["tokenizer.ggml.token_type"][16] == 6  # <0x00> is a byte piece
    scores = meta["tokenizer.ggml.scores"]
    assert scores[272] == 0 and scores[273] == -1 and scores[-1] == -(len(scores) - 273)
    assert meta["tokenizer.ggml.eot_token_id"] == 5 and meta["tokenizer.ggml.bos_token_id"] == 1


def test_round_trip_through_the_gguf_writer(tok, tmp_path):
    path = tmp_path / "tok.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    write_tokenizer(writer, tok)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    meta = read_metadata(path)
    expected = gguf_metadata(tok)
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.model", "tokenizer.ggml.pre",
                "tokenizer.chat_template", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        assert meta[key] == expected[key], key
    assert [float(s) for s in meta["tokenizer.ggml.scores"]] == expected["tokenizer.ggml.scores"]
    sp = sentencepiece.SentencePieceProcessor(model_proto=sentencepiece_from_gguf(meta))
    texts = [*corpus_lines(), "Où est la gare ? 2024 🥐 日本"]
    assert sp.encode(texts) == tok.encode_batch(texts)


def test_llama_cpp_tokenizes_the_gguf_like_us(tok, tmp_path):
    """llama.cpp's SPM tokenizer (vocab-only load) agrees on plain text; after a special token it adds a space."""
    llama_cpp = pytest.importorskip("llama_cpp")
    path = tmp_path / "vocab.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)  # llama.cpp reads the hyper-parameters even for a vocabulary-only load
    writer.add_embedding_length(8)
    writer.add_block_count(1)
    writer.add_feed_forward_length(16)
    writer.add_head_count(1)
    writer.add_layer_norm_rms_eps(1e-5)
    write_tokenizer(writer, tok)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    for text in [*corpus_lines(), " deux  espaces", "2024 🥐 日本 œ", "fin\n\n"]:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == tok.encode(text), text
    chat = "<|im_start|>user\nBonjour<|im_end|>"
    assert llm.tokenize(chat.encode(), add_bos=False, special=True) == [4, *tok.encode("user\nBonjour"), 5]
    assert tok.encode(chat) != [4, *tok.encode("user\nBonjour"), 5]  # ours: "user" right after the special, no "▁"
