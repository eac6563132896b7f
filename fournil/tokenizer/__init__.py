"""Tokenizer stage: a bilingual byte-fallback BPE tokenizer, trained, measured and exported (HF, SentencePiece, GGUF).
Imported lazily so that `fournil --help` and recipe validation do not pay for `tokenizers`."""

from fournil.lazy import lazy_api

__all__, __getattr__ = lazy_api(__name__, {
    ".config": "TokenizerConfig", ".bpe": "Tokenizer", ".train": "train", ".export": "save", ".report": "fertility",
    ".gguf": "gguf_metadata"
})
