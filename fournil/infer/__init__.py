"""Infer stage: generation, chat, translation, weight-only quantisation, GGUF import/export, OpenAI-compatible server.

Public API: `SamplingConfig`, `Engine`, `decode_steps`, `PromptTokenizer`, `quantize`, `load_quantized`,
`import_gguf`, `export_gguf`, `Scheduler` (continuous batching), `create_app` and `serve` (the HTTP server).
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
    "Scheduler": "fournil.infer.batching",
    "create_app": "fournil.infer.server",
    "serve": "fournil.infer.server",
}
__all__ = sorted(_API)

__getattr__ = lazy_getattr(__name__, _API)
