"""Infer stage: generation, chat, translation, weight-only quantisation, GGUF import/export (the HTTP server is
`fournil.serve`).

Public API: `SamplingConfig`, `Engine`, `decode_steps`, `PromptTokenizer`, `quantize`, `load_quantized`,
`import_gguf`, `export_gguf`.
Imported lazily so that `fournil --help` does not pay for torch.
"""

from fournil.lazy import lazy_getattr

_API = {
    "SamplingConfig": "fournil.infer.config",
    "Engine": "fournil.infer.generate",
    "decode_steps": "fournil.infer.generate",
    "PromptTokenizer": "fournil.infer.prompt",
    "quantize": "fournil.infer.quantize",
    "load_quantized": "fournil.infer.quantize",
    "import_gguf": "fournil.infer.gguf_io",
    "export_gguf": "fournil.infer.gguf_io",
}
__all__ = sorted(_API)

__getattr__ = lazy_getattr(__name__, _API)
