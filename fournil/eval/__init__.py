"""Eval stage: FrenchBench, Belebele, an English sanity set and translation, offline, in agreement with lm-eval:
`Engine` (batched log-likelihoods, greedy generation), `evaluate` (one task), `run` (a results directory).
Imported lazily so that `fournil --help` does not pay for torch and transformers."""

from fournil.lazy import lazy_api

__all__, __getattr__ = lazy_api(__name__, {
    ".engine": "Engine", ".tasks": "TASKS GROUPS resolve_tasks", ".runner": "evaluate run",
    ".report": "write_report", ".config": "EvalConfig"
})
