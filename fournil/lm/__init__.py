"""The language-model runtime every stage builds on: the Llama forward and its KV stores.

It sits below the stages (corpus … serve) and imports none of them, so training, evaluation, inference and the
server all run the same code. Public API: `ModelConfig`, `Llama`, `KVCache`.
Imported lazily so that `fournil --help` does not pay for torch.
"""

from fournil.lazy import lazy_getattr

_API = {
    "ModelConfig": "fournil.lm.config",
    "Llama": "fournil.lm.llama",
    "KVCache": "fournil.lm.llama",
}
__all__ = sorted(_API)

__getattr__ = lazy_getattr(__name__, _API)
