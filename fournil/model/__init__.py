"""Model stage: the Llama decoder and its Hugging Face directory format.

Public API: `ModelConfig`, `Llama`, `KVCache`, `load_model`, `save_model`, `convert`, `read_config`,
`param_counts`. Imported lazily so that `fournil --help` and recipe validation do not pay for torch.
"""

from importlib import import_module

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


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'fournil.model' has no attribute {name!r}")
