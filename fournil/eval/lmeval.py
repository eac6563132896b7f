"""lm-eval interop: run lm-eval's own task definitions on the same local files fournil reads.

lm-eval's shipped tasks load from the hub; a group whose entries override only `dataset_path`/`dataset_kwargs`
points them at local jsonl files while prompts, processing and metrics stay upstream. FrenchBench's ROUGE-1
aggregation calls `evaluate.load("rouge")`, which fetches the metric's script from the hub; `run` answers that call
with `LocalRouge`, the same computation on `rouge_score`, so those tasks finish offline too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from fournil.console import UsageError
from fournil.eval.data import split_file
from fournil.eval.tasks import Task


class LocalRouge:
    """What `evaluate.load("rouge")` returns, without the hub: HF evaluate's `rouge` metric (evaluate 0.4.x,
    `metrics/rouge/rouge.py`) rebuilt on `rouge_score`, with the same defaults.

    Its semantics: ROUGE types rouge1, rouge2, rougeL, rougeLsum; no stemmer; rouge_score's default tokenizer; a
    list of references per prediction is scored with `score_multi`. With `use_aggregator` (the default, and what
    lm-eval's `rouge1_agg` gets) the per-example scores go into rouge_score's `BootstrapAggregator` (1000
    resamples of the global NumPy generator, one round per ROUGE type in that order) and each type reports the
    F-measure of the median of the resampled means; without it, the per-example F-measures.
    """

    def compute(self, *, predictions: Sequence[str], references: Sequence[Any], rouge_types: list[str] | None = None,
                use_aggregator: bool = True, use_stemmer: bool = False,
                tokenizer: Callable[[str], list[str]] | None = None) -> dict[str, Any]:
        from rouge_score import rouge_scorer, scoring

        types = rouge_types or ["rouge1", "rouge2", "rougeL", "rougeLsum"]
        words = None
        if tokenizer is not None:  # evaluate wraps a callable into rouge_score's tokenizer interface
            words = type("CallableTokenizer", (), {"tokenize": staticmethod(tokenizer)})()
        scorer = rouge_scorer.RougeScorer(rouge_types=types, use_stemmer=use_stemmer, tokenizer=words)
        multi = bool(references) and isinstance(references[0], list)
        scores = [scorer.score_multi(ref, pred) if multi else scorer.score(ref, pred)
                  for ref, pred in zip(references, predictions, strict=True)]
        if not use_aggregator:
            return {t: [s[t].fmeasure for s in scores] for t in types}
        aggregator = scoring.BootstrapAggregator()
        for score in scores:
            aggregator.add_scores(score)
        return {t: value.mid.fmeasure for t, value in aggregator.aggregate().items()}


@contextlib.contextmanager
def local_hub_metrics() -> Iterator[None]:
    """Inside, `evaluate.load("rouge")` returns `LocalRouge`; any other metric loads as usual."""
    import evaluate

    original = evaluate.load

    def load(path: str, *args: Any, **kwargs: Any) -> Any:
        return LocalRouge() if path == "rouge" else original(path, *args, **kwargs)

    evaluate.load = load
    try:
        yield
    finally:
        evaluate.load = original


def task_entry(task: Task, data_dir: str | Path, max_gen_tokens: int | None = None) -> dict[str, Any]:
    """lm-eval group entry for `task` reading `data_dir`; every split the YAML names must map to a file."""
    splits = {s for s in (task.eval_split, task.fewshot_split, task.test_split) if s}
    splits |= _yaml_splits(task)
    files: dict[str, str] = {}
    fallback = split_file(data_dir, task.dataset, task.eval_split)
    if fallback is None:
        raise UsageError(f"{task.name}: no {task.eval_split} file under {Path(data_dir) / task.dataset}")
    for split in sorted(splits):
        path = split_file(data_dir, task.dataset, split) or fallback  # unused splits may share one file
        files[split] = str(Path(path).resolve())
    kind = "parquet" if fallback.suffix == ".parquet" else "json"
    entry = {"task": task.upstream, "dataset_path": kind, "dataset_name": None,
             "dataset_kwargs": {"data_files": files}}
    if task.kind == "gen" and max_gen_tokens:
        entry["generation_kwargs"] = {"until": list(task.until), "max_gen_toks": max_gen_tokens, "do_sample": False}
    return entry


def _yaml_splits(task: Task) -> set[str]:
    """Splits lm-eval's YAML for this task refers to (it builds them all, even at 0-shot)."""
    named = {"french_bench_hellaswag": {"validation"}, "french_bench_arc_challenge": {"train", "validation", "test"},
             "hellaswag": {"train", "validation"}, "arc_easy": {"train", "validation", "test"},
             "piqa": {"train", "validation"}, "french_bench_wikitext_fr": {"train", "validation", "test"},
             "french_bench_opus_perplexity": {"validation", "test"}}
    return named.get(task.name, {"valid", "test"} if task.name.startswith("french_bench") else set())


def task_manager(include_path: list[str] | None = None) -> Any:
    """A TaskManager over just the folders holding our tasks (indexing all of lm-eval takes ~20 s)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    root = Path(lm_eval.__file__).parent / "tasks"
    paths = [str(root / d) for d in ("french_bench", "belebele", "hellaswag", "arc", "piqa")]
    return TaskManager(include_defaults=False, include_path=paths + list(include_path or []))


def run(model_dir: str | Path, tasks: list[Task], data_dir: str | Path, *, num_fewshot: int = 0,
        limit: int | None = None, batch_size: int = 16, device: str = "cpu", seed: int = 1234,
        max_gen_tokens: int | None = None, samples: dict[str, list] | None = None) -> dict[str, dict]:
    """Scores from lm-eval's `hf` model on our local files: {task: {metric: value}}.

    `samples`, when given, is filled with each task's per-document responses in document order (log-likelihoods
    for multiple choice, texts for generation), for comparisons finer than the aggregate."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate

    entries = [task_entry(t, data_dir, max_gen_tokens) for t in tasks if t.upstream]
    group = {"group": "fournil_local", "task": entries}
    with local_hub_metrics():
        results = simple_evaluate(model="hf", model_args={"pretrained": str(model_dir), "dtype": "float32"},
                                  tasks=[group], num_fewshot=num_fewshot, limit=limit, batch_size=batch_size,
                                  device=device, task_manager=task_manager(), log_samples=samples is not None,
                                  random_seed=seed, fewshot_random_seed=seed, bootstrap_iters=0)
    if samples is not None:
        for name, rows in results.get("samples", {}).items():
            samples[name] = [_first(row["filtered_resps"]) if len(row["filtered_resps"]) == 1
                             else [_first(r) for r in row["filtered_resps"]]
                             for row in sorted(rows, key=lambda row: row["doc_id"])]
    out = {}
    for name, values in results["results"].items():
        out[name] = {k.split(",")[0]: v for k, v in values.items()
                     if "," in k and not k.split(",")[0].endswith("_stderr") and isinstance(v, int | float)}
    return out


def _first(value: Any) -> Any:
    """lm-eval wraps responses in lists and tuples ((ll, is_greedy), [text]); the first scalar inside."""
    while isinstance(value, list | tuple):
        value = value[0]
    return value
