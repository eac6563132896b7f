"""The tokenizer half of a GGUF file's metadata, as plain data, so the infer stage can write it beside the weights.

Our tokenizer is SentencePiece-equivalent, so it is stored as llama.cpp's "llama" (SPM) tokenizer: pieces, scores
(-rank, merged highest first), token types, special ids. llama.cpp applies no pre-tokenizer regex to SPM models;
"default" is recorded as the pre-tokenizer type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fournil.tokenizer.bpe import Tokenizer
from fournil.tokenizer.config import CHATML
from fournil.tokenizer.export import CHAT_TEMPLATE, piece_scores, piece_types

# gguf.TokenType values (they equal SentencePiece's piece types)
TOKEN_TYPES = {"NORMAL": 1, "UNKNOWN": 2, "CONTROL": 3, "USER_DEFINED": 4, "UNUSED": 5, "BYTE": 6}


def gguf_metadata(tok: Tokenizer) -> dict[str, Any]:
    """GGUF key → value for every tokenizer key llama.cpp reads."""
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tok.vocab(),
        "tokenizer.ggml.scores": [float(s) for s in piece_scores(tok)],
        "tokenizer.ggml.token_type": [TOKEN_TYPES[t] for t in piece_types(tok)],
        "tokenizer.ggml.unknown_token_id": tok.unk_id,
        "tokenizer.ggml.bos_token_id": tok.bos_id,
        "tokenizer.ggml.eos_token_id": tok.eos_id,
        "tokenizer.ggml.padding_token_id": tok.pad_id,
        "tokenizer.ggml.eot_token_id": tok.piece_to_id(CHATML[1]),  # chat turns end with <|im_end|>
        "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": True,
        "tokenizer.chat_template": CHAT_TEMPLATE,
    }


def write_tokenizer(writer: Any, tok: Tokenizer) -> None:
    """Add the tokenizer keys to a `gguf.GGUFWriter` (before `write_header_to_file`)."""
    meta = gguf_metadata(tok)
    writer.add_tokenizer_model(meta["tokenizer.ggml.model"])
    writer.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    writer.add_token_list(meta["tokenizer.ggml.tokens"])
    writer.add_token_scores(meta["tokenizer.ggml.scores"])
    writer.add_token_types(meta["tokenizer.ggml.token_type"])
    writer.add_unk_token_id(meta["tokenizer.ggml.unknown_token_id"])
    writer.add_bos_token_id(meta["tokenizer.ggml.bos_token_id"])
    writer.add_eos_token_id(meta["tokenizer.ggml.eos_token_id"])
    writer.add_pad_token_id(meta["tokenizer.ggml.padding_token_id"])
    writer.add_eot_token_id(meta["tokenizer.ggml.eot_token_id"])
    writer.add_add_bos_token(meta["tokenizer.ggml.add_bos_token"])
    writer.add_add_eos_token(meta["tokenizer.ggml.add_eos_token"])
    writer.add_add_space_prefix(meta["tokenizer.ggml.add_space_prefix"])
    writer.add_chat_template(meta["tokenizer.chat_template"])


def read_metadata(path: str | Path, prefix: str = "tokenizer.") -> dict[str, Any]:
    """The tokenizer keys of a GGUF file as plain Python values (lists for arrays)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items() if name.startswith(prefix)}


def sentencepiece_from_gguf(meta: dict[str, Any]) -> bytes:
    """Rebuild a SentencePiece model from a "llama"-type GGUF tokenizer (proves the vocabulary round-trips)."""
    from fournil.tokenizer.export import sentencepiece_model

    names = {v: k for k, v in TOKEN_TYPES.items()}
    return sentencepiece_model(list(meta["tokenizer.ggml.tokens"]), list(meta["tokenizer.ggml.scores"]),
                               [names[t] for t in meta["tokenizer.ggml.token_type"]])
