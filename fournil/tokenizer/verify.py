"""Equivalence check: our ids = transformers' AutoTokenizer ids = SentencePiece ids, and text round-trips.

Known SentencePiece exceptions (docs/tokenizer.md) are counted apart, not as failures: a text that starts with a
special token (SentencePiece puts its dummy "▁" before it) and literal control-token strings such as "</s>"
(matched as specials by HF, as plain text by SentencePiece).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fournil.tokenizer.bpe import Tokenizer
from fournil.tokenizer.config import SPECIALS


def is_sentencepiece_exception(tok: Tokenizer, text: str) -> bool:
    """Inputs where exact SentencePiece equality is impossible by design (documented)."""
    return any(text.startswith(s) for s in tok.specials()) or any(s in text for s in SPECIALS)


def compare(directory: str | Path, texts: list[str], max_examples: int = 5) -> dict[str, Any]:
    import sentencepiece

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    directory = Path(directory)
    tok = Tokenizer.load(directory)
    auto = AutoTokenizer.from_pretrained(str(directory))
    sp = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
    ours = tok.encode_batch(texts)
    theirs = auto(texts, add_special_tokens=False)["input_ids"]
    sp_ids = sp.encode(texts)
    result: dict[str, Any] = {"documents": len(texts), "transformers_differ": 0, "sentencepiece_differ": 0,
                              "sentencepiece_exceptions": 0, "roundtrip_failures": 0, "examples": []}
    for text, a, b, c in zip(texts, ours, theirs, sp_ids, strict=True):
        if a != b:
            result["transformers_differ"] += 1
            result["examples"].append(("transformers", text[:200]))
        if a != c:
            if is_sentencepiece_exception(tok, text):
                result["sentencepiece_exceptions"] += 1
            else:
                result["sentencepiece_differ"] += 1
                result["examples"].append(("sentencepiece", text[:200]))
        if tok.decode(a) != text:
            result["roundtrip_failures"] += 1
            result["examples"].append(("roundtrip", text[:200]))
    result["examples"] = result["examples"][:max_examples]
    result["ok"] = not (result["transformers_differ"] or result["sentencepiece_differ"] or result["roundtrip_failures"])
    return result
