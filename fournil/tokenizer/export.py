"""Export: a Hugging Face tokenizer directory plus a SentencePiece `tokenizer.model`, manifest written last.

The SentencePiece model is built field by field (no SentencePiece training): the same pieces, each learned piece
scored by minus its rank so SentencePiece's highest-score-first merging replays our merge order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fournil.artifacts import atomic_path, mark_incomplete, write_json, write_manifest, write_text
from fournil.tokenizer.bpe import BYTE_PIECES, Tokenizer
from fournil.tokenizer.config import CHATML, SPECIALS

log = logging.getLogger(__name__)
BYTE_PIECES_SET = frozenset(BYTE_PIECES)

SP_MODEL = "tokenizer.model"
# ChatML (arXiv 2402.00786 fine-tunes CroissantLLMChat on it); BOS comes from the template, as in training data.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def piece_types(tok: Tokenizer) -> list[str]:
    """SentencePiece type of every id: unknown, control (bos/eos/pad), user-defined (ChatML, reserved), byte, normal.

    User-defined pieces are matched in raw text, like HF added tokens; control pieces are not (see docs).
    """
    specials = set(tok.specials())
    control = set(SPECIALS[1:])
    types = []
    for piece in tok.vocab():
        if piece == SPECIALS[0]:
            types.append("UNKNOWN")
        elif piece in control:
            types.append("CONTROL")
        elif piece in specials:
            types.append("USER_DEFINED")
        elif piece in BYTE_PIECES_SET:
            types.append("BYTE")
        else:
            types.append("NORMAL")
    return types


def piece_scores(tok: Tokenizer) -> list[float]:
    """Score of every id: 0 for specials and bytes, -rank for learned pieces (SentencePiece merges high scores first)."""
    types = piece_types(tok)
    first = types.index("NORMAL") if "NORMAL" in types else len(types)
    return [-(i - first) if t == "NORMAL" else 0.0 for i, t in enumerate(types)]


def sentencepiece_proto(tok: Tokenizer) -> bytes:
    """Serialized `ModelProto` of a BPE SentencePiece model with byte fallback, equivalent to `tok`."""
    return sentencepiece_model(tok.vocab(), piece_scores(tok), piece_types(tok))


def sentencepiece_model(pieces: list[str], scores: list[float], types: list[str]) -> bytes:
    """A SentencePiece BPE model from parallel lists (also used to rebuild one from GGUF metadata)."""
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    proto = sp_pb2.ModelProto()
    kind = sp_pb2.ModelProto.SentencePiece.Type
    for piece, score, ptype in zip(pieces, scores, types, strict=True):
        proto.pieces.add(piece=piece, score=float(score), type=kind.Value(ptype))
    spec = proto.trainer_spec
    spec.model_type = sp_pb2.TrainerSpec.BPE
    spec.vocab_size = len(pieces)
    spec.byte_fallback = True
    spec.split_digits = True
    spec.max_sentencepiece_length = max(len(p) for p, t in zip(pieces, types, strict=True) if t == "NORMAL")
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = (pieces.index(s) for s in SPECIALS)
    spec.unk_piece, spec.bos_piece, spec.eos_piece, spec.pad_piece = SPECIALS
    spec.user_defined_symbols.extend(p for p, t in zip(pieces, types, strict=True) if t == "USER_DEFINED")
    norm = proto.normalizer_spec
    norm.name = "identity"  # no NFKC: the text is kept exactly, as ours is
    norm.add_dummy_prefix = True
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    norm.precompiled_charsmap = b""
    return proto.SerializeToString()


def tokenizer_config(tok: Tokenizer, max_length: int | None = None) -> dict[str, Any]:
    """transformers' tokenizer_config.json: the generic fast tokenizer over our tokenizer.json, unchanged."""
    added = {str(i): {"content": t, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False,
                      "special": True} for i, t in enumerate(tok.specials())}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": SPECIALS[1], "eos_token": SPECIALS[2], "unk_token": SPECIALS[0], "pad_token": SPECIALS[3],
        "additional_special_tokens": list(CHATML),
        "add_bos_token": True, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length or 1_000_000_000_000_000_019_884_624_838_656,
        "added_tokens_decoder": added,
        "chat_template": CHAT_TEMPLATE,
    }


def special_tokens_map() -> dict[str, Any]:
    return {"bos_token": SPECIALS[1], "eos_token": SPECIALS[2], "unk_token": SPECIALS[0], "pad_token": SPECIALS[3],
            "additional_special_tokens": list(CHATML)}


def save(tok: Tokenizer, out: str | Path, manifest: dict[str, Any] | None = None, sentencepiece: bool = True,
         fertility: list[dict[str, Any]] | None = None) -> Path:
    """Write the tokenizer directory; `fournil.json` goes last so a half-written directory is never "complete".

    `fertility`: report results (`report.fertility`) to keep beside the tokenizer as fertility.json and .png.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mark_incomplete(out, "fournil.tokenizer")
    write_text(out / "tokenizer.json", tok.to_json())
    write_json(out / "tokenizer_config.json", tokenizer_config(tok))
    write_json(out / "special_tokens_map.json", special_tokens_map())
    write_text(out / "chat_template.jinja", CHAT_TEMPLATE)
    if sentencepiece:
        try:
            proto = sentencepiece_proto(tok)
        except ImportError:
            log.warning("sentencepiece is not installed: no %s written (pip install sentencepiece protobuf)", SP_MODEL)
        else:
            with atomic_path(out / SP_MODEL) as tmp:
                tmp.write_bytes(proto)
    if fertility:
        from fournil.tokenizer.report import plot

        write_json(out / "fertility.json", fertility)
        plot(fertility, out / "fertility.png")
    fields = {"vocab_size": tok.vocab_size, "tokenizer_sha256": tok.fingerprint(),
              "special_ids": {p: tok.piece_to_id(p) for p in tok.specials()}, **(manifest or {})}
    write_manifest(out, "fournil.tokenizer", **fields)
    return out
