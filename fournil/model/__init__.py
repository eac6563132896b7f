"""Model stage: the Llama decoder and its Hugging Face directory format.

Public API: `ModelConfig`, `Llama`, `KVCache`, `load_model`, `save_model`, `convert`, `read_config`,
`param_counts`. Imported lazily so that `fournil --help` and recipe validation do not pay for torch.
"""

from fournil.lazy import lazy_getattr

_API = {
    "ModelConfig": "fournil.model.config",
    "Llama": "fournil.model.llama",
    "KVCache": "fournil.model.llama",
    "load_model": "fournil.model.hf",
    "save_model": "fournil.model.hf",
    "convert": "fournil.model.hf",
    "read_config": "fournil.model.hf",
    "param_counts": "fournil.model.info",
}
__all__ = sorted(_API)

__getattr__ = lazy_getattr(__name__, _API)
