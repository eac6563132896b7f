"""The language-model runtime every stage builds on: the Llama decoder, its directory format and arithmetic, the
quantised layers and CPU kernels, decode backends, sampling, prompt text and the decode loop.

It sits below the stages (corpus … serve) and imports none of them, so training, evaluation, inference and the
server all run the same code. Public API: `ModelConfig`, `Llama`, `KVCache`, `load_model`, `save_model`,
`read_config`, `param_counts`, `load`, `load_quantized`, `SamplingConfig`, `PromptTokenizer`, `StreamDecoder`,
`decode_steps`, `Engine`.
Imported lazily so that `fournil --help` does not pay for torch.
"""

from fournil.lazy import lazy_getattr

_API = {
    "ModelConfig": "fournil.lm.config",
    "Llama": "fournil.lm.llama",
    "KVCache": "fournil.lm.llama",
    "load_model": "fournil.lm.hf",
    "save_model": "fournil.lm.hf",
    "read_config": "fournil.lm.hf",
    "param_counts": "fournil.lm.info",
    "load": "fournil.lm.quantized",
    "load_quantized": "fournil.lm.quantized",
    "SamplingConfig": "fournil.lm.sampling",
    "PromptTokenizer": "fournil.lm.prompt",
    "StreamDecoder": "fournil.lm.prompt",
    "decode_steps": "fournil.lm.generate",
    "Engine": "fournil.lm.generate",
}
__all__ = sorted(_API)

__getattr__ = lazy_getattr(__name__, _API)
