"""Model stage: the `fournil model` verbs (init, convert, info). The decoder, its directory format and its
arithmetic are the runtime's (`fournil.lm.llama`, `fournil.lm.hf`, `fournil.lm.info`); re-exported here for
the stage's users. Imported lazily so that `fournil --help` and recipe validation do not pay for torch."""

from fournil.lazy import lazy_api

__all__, __getattr__ = lazy_api(__name__, {
    "fournil.lm.hf": "load_model save_model convert read_config", "fournil.lm.info": "param_counts"
})
