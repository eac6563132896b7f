"""Tokenizer stage: a bilingual byte-fallback BPE tokenizer, trained, measured and exported (HF, SentencePiece, GGUF).

Public API: `TokenizerConfig`, `Tokenizer`, `train`, `save`, `fertility`, `gguf_metadata`. Imported lazily so that
`fournil --help` and recipe validation do not pay for `tokenizers`.
"""

from importlib import import_module

_API = {
    "TokenizerConfig": "fournil.tokenizer.config",
    "Tokenizer": "fournil.tokenizer.bpe",
    "train": "fournil.tokenizer.train",
    "save": "fournil.tokenizer.export",
    "fertility": "fournil.tokenizer.report",
    "gguf_metadata": "fournil.tokenizer.gguf",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'fournil.tokenizer' has no attribute {name!r}")
