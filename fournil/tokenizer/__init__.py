"""Tokenizer stage: a bilingual byte-fallback BPE tokenizer, trained, measured and exported (HF, SentencePiece, GGUF).

Public API: `TokenizerConfig`, `Tokenizer`, `train`, `save`, `fertility`, `gguf_metadata`. Imported lazily so that
`fournil --help` and recipe validation do not pay for `tokenizers`.
"""

from fournil.lazy import lazy_getattr

_API = {
    "TokenizerConfig": "fournil.tokenizer.config",
    "Tokenizer": "fournil.tokenizer.bpe",
    "train": "fournil.tokenizer.train",
    "save": "fournil.tokenizer.export",
    "fertility": "fournil.tokenizer.report",
    "gguf_metadata": "fournil.tokenizer.gguf",
}
__all__ = sorted(_API)

__getattr__ = lazy_getattr(__name__, _API)
