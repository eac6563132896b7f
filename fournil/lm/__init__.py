"""The language-model runtime every stage builds on: the Llama decoder, its directory format and arithmetic, the
quantised layers and CPU kernels, decode backends, sampling, prompt text and the decode loop.

It sits below the stages (corpus … serve) and imports none of them, so training, evaluation, inference and the
server all run the same code. Imported lazily so that `fournil --help` does not pay for torch."""

from fournil.lazy import lazy_api

__all__, __getattr__ = lazy_api(__name__, {
    ".config": "ModelConfig", ".llama": "Llama KVCache", ".hf": "load_model save_model read_config",
    ".info": "param_counts", ".quantized": "load load_quantized", ".sampling": "SamplingConfig",
    ".prompt": "PromptTokenizer StreamDecoder", ".generate": "decode_steps Engine"
})
