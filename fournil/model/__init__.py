"""Model stage: the `fournil model` verbs (init, convert, info). The decoder, its directory format and its
arithmetic are the runtime's (`fournil.lm.llama`, `fournil.lm.hf`, `fournil.lm.info`); re-exported here for
the stage's users. Imported lazily so that `fournil --help` and recipe validation do not pay for torch.
"""

from fournil.lazy import lazy_getattr

_API = {
    "load_model": "fournil.lm.hf",
    "save_model": "fournil.lm.hf",
    "convert": "fournil.lm.hf",
    "read_config": "fournil.lm.hf",
    "param_counts": "fournil.lm.info",
}
__all__ = sorted(_API)

__getattr__ = lazy_getattr(__name__, _API)
