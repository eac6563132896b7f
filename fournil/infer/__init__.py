"""Infer stage: the generate, chat and translate verbs, weight-only quantisation, GGUF import/export. The decoding
they run (sampling, the decode loop, its backends) is the runtime's, `fournil.lm`; the HTTP server is `fournil.serve`.
Imported lazily so that `fournil --help` does not pay for torch."""

from fournil.lazy import lazy_api

__all__, __getattr__ = lazy_api(__name__, {".quantize": "quantize", ".gguf_io": "import_gguf export_gguf"})
