"""Model stage: the Hugging Face directory format of fournil's Llama (the decoder itself is `fournil.lm.llama`).

Public API: `load_model`, `save_model`, `convert`, `read_config`,
`param_counts`. Imported lazily so that `fournil --help` and recipe validation do not pay for torch.
"""

from fournil.lazy import lazy_getattr

_API = {
    "load_model": "fournil.model.hf",
    "save_model": "fournil.model.hf",
    "convert": "fournil.model.hf",
    "read_config": "fournil.model.hf",
    "param_counts": "fournil.model.info",
}
__all__ = sorted(_API)

__getattr__ = lazy_getattr(__name__, _API)
