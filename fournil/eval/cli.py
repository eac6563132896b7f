"""`fournil eval …`: score models on FrenchBench, English sanity tasks and translation; compare runs."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from fournil.artifacts import claim_output
from fournil.console import print_json, print_table

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  fournil eval list                                         tasks, groups and the data files they read
  fournil eval fetch --out data/eval                        (online) snapshot every FrenchBench dataset
  fournil eval run out/model --tasks french_bench_mc,translation --data data/eval --out out/eval/model
  fournil eval run out/model --tasks all --data data/eval --out out/eval/model --limit 100 --num-fewshot 5
  fournil eval run croissantllm/CroissantLLMBase --tasks french_bench --data data/eval --out out/eval/croissant
  fournil eval report out/eval/model out/eval/croissant --out out/eval/report   (REPORT.md + report.png)
"""


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from fournil.cli import NON_NEGATIVE, POSITIVE, SEED, Stage, backend_option

    stage = Stage(subparsers, common, "eval", epilog=EPILOG,
                  help="FrenchBench, English sanity tasks and translation; side-by-side reports",
                  description="Evaluate model directories offline from local data in the hub datasets' schemas, "
                  "with the prompts and metrics of lm-eval's french_bench tasks.")
    run = stage.verb("run", cmd_run, dtype="weights dtype (default: saved)")
    run.add_argument("model", help="model directory (or a hub id when online)")
    run.add_argument("--tasks", required=True, help="comma-separated task or group names (see `fournil eval list`)")
    run.add_argument("--data", type=Path, default=Path("data/eval"), help="local data directory")
    run.add_argument("--out", type=Path, required=True, help="results directory")
    run.add_argument("--limit", type=POSITIVE, help="first N documents of each task")
    run.add_argument("--num-fewshot", type=NON_NEGATIVE, help="few-shot examples (default: each task's, 0; translation 5)")
    run.add_argument("--seed", type=SEED, default=1234, help="few-shot sampling seed (lm-eval's default)")
    run.add_argument("--batch-tokens", type=POSITIVE, default=4096, help="tokens per log-likelihood forward pass")
    run.add_argument("--batch-size", type=POSITIVE, default=16, help="prompts per generation batch")
    run.add_argument("--max-gen-tokens", type=POSITIVE, help="generation cap per prompt (default: 256, as lm-eval)")
    run.add_argument("--chat", action="store_true",
                     help="translation: ask through the model's chat template (a fine-tuned model) instead of shots")
    run.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    backend_option(run)

    report = stage.verb("report", cmd_report)
    report.add_argument("results", nargs="+", type=Path, help="results directories (from `fournil eval run`)")
    report.add_argument("--out", type=Path, help="report directory (default: the first results directory)")

    fetch = stage.verb("fetch", cmd_fetch)
    fetch.add_argument("--out", type=Path, default=Path("data/eval"), help="data directory")
    fetch.add_argument("--tasks", default="all", help="task or group names")

    listing = stage.verb("list", cmd_list)
    listing.add_argument("--data", type=Path, default=Path("data/eval"), help="mark which files are present")


def cmd_run(args: argparse.Namespace) -> None:
    """score one model on tasks; JSON per task in the results directory (resumable)

    Score a fournil or transformers Llama directory. Results go to OUT/<task>.json, per-document outputs
    to OUT/samples/; rerunning the same command continues a killed run."""
    from fournil.eval.runner import run
    from fournil.eval.tasks import resolve_tasks

    tasks = resolve_tasks(args.tasks)
    claim_output(args.out, "fournil.eval", inputs=[args.model, args.data], resume=True, signature=("samples",))
    results = run(args.model, tasks, args.data, args.out, num_fewshot=args.num_fewshot, limit=args.limit,
                  seed=args.seed, batch_size=args.batch_size, batch_tokens=args.batch_tokens,
                  max_gen_tokens=args.max_gen_tokens, device=args.device, dtype=args.dtype, chat=args.chat,
                  backend=args.backend)
    if args.json:
        print_json(results)
        return
    _print_results(results)
    log.info("results in %s", args.out)


def _print_results(results: list[dict]) -> None:
    rows = [((r["task"], str(r["n"]), str(r["num_fewshot"])) if i == 0 else ("", "", "")) + (metric, f"{value:.4f}")
            for r in results for i, (metric, value) in enumerate(r["metrics"].items())]
    print_table("fournil eval", rows, header=("task", "n", "shots", "metric", "value"), right=(1, 2, 4))
    for r in results:
        if "signature" in r:
            print(f"{r['task']}: BLEU {r['signature']['bleu']}\n{r['task']}: chrF {r['signature']['chrf']}")


def cmd_report(args: argparse.Namespace) -> None:
    """Markdown + PNG comparing results directories side by side, with FR/EN parity

    Write OUT/REPORT.md and OUT/report.png from one or more results directories."""
    from fournil.eval.report import load_results, parity, write_report

    path = write_report(args.results, args.out or args.results[0])
    if args.json:
        print_json({"report": str(path), "png": str(path.with_name("report.png")),
                    "parity": {str(d): parity(load_results(d)) for d in args.results}})
    else:
        print(path.read_text(encoding="utf-8"))


def cmd_fetch(args: argparse.Namespace) -> None:
    """(online) download the tasks' datasets into a local data directory

    Snapshot the hub datasets of the chosen tasks as DIR/<dataset>/<split>.jsonl. Offline, lists what is
    missing and where it comes from."""
    from fournil.eval.fetch import fetch
    from fournil.eval.tasks import resolve_tasks

    written = fetch(resolve_tasks(args.tasks), args.out)
    if args.json:
        print_json([str(p) for p in written])


def cmd_list(args: argparse.Namespace) -> None:
    """tasks, groups, metrics and the data files each reads

    Every task with its language, metrics, data folder and splits; every group."""
    from fournil.eval.data import split_file
    from fournil.eval.tasks import GROUPS, TASKS

    rows = []
    for task in TASKS.values():
        splits = [s for s in dict.fromkeys((task.eval_split, task.fewshot_split)) if s]
        present = {s: split_file(args.data, task.dataset, s) is not None for s in splits}
        rows.append({"task": task.name, "language": task.language, "kind": task.kind, "metrics": list(task.metrics),
                     "dataset": task.dataset, "hub": task.hub[0], "splits": present,
                     "lm_eval": task.upstream})
    if args.json:
        print_json({"tasks": rows, "groups": GROUPS})
        return
    print_table(f"tasks (data: {args.data})", [
        (r["task"], r["language"], r["kind"], ", ".join(r["metrics"]), r["dataset"],
         " ".join(f"{s}{'✓' if ok else '✗'}" for s, ok in r["splits"].items())) for r in rows],
        header=("task", "lang", "kind", "metrics", "data folder", "splits (✓ present)"), right=())
    for name, members in GROUPS.items():
        print(f"{name}: {', '.join(members)}" if name != "all" else "all: every task")
