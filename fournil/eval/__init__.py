"""Eval stage: FrenchBench, Belebele, an English sanity set and translation, offline, in agreement with lm-eval.

Public API: `Engine` (batched log-likelihoods, greedy generation), `TASKS`/`GROUPS`/`resolve_tasks`, `evaluate`
(one task), `run` (a results directory), `write_report`, `EvalConfig`. Imported lazily so that `fournil --help`
does not pay for torch and transformers.
"""

from fournil.lazy import lazy_getattr

_API = {
    "Engine": "fournil.eval.engine",
    "TASKS": "fournil.eval.tasks",
    "GROUPS": "fournil.eval.tasks",
    "resolve_tasks": "fournil.eval.tasks",
    "evaluate": "fournil.eval.runner",
    "run": "fournil.eval.runner",
    "write_report": "fournil.eval.report",
    "EvalConfig": "fournil.eval.config",
}
__all__ = sorted(_API)

__getattr__ = lazy_getattr(__name__, _API)
