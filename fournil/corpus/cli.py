"""`fournil corpus …`: build a cleaned, deduplicated FR/EN/code/parallel corpus, pack it into shards, report it."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from fournil.artifacts import claim_output
from fournil.console import UsageError, print_json, print_table

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  fournil corpus run corpus.yaml --out out/corpus                 the whole chain, all cores, resumable
  fournil corpus run --sample --out out/sample-corpus --workers 2  the embedded sample corpus
  fournil corpus run corpus.yaml --out /shared/corpus --executor slurm          one array job per stage, returns
  fournil corpus run corpus.yaml --out /shared/corpus --executor slurm --wait   …and follows them to the end
  RAY_ADDRESS=auto fournil corpus run corpus.yaml --out out/corpus --executor ray
  fournil corpus pack out/corpus out/tok --out out/shards --seq-len 2048
  fournil corpus report out/corpus --shards out/shards            DATASHEET.md, datasheet.json, datasheet.png
  fournil corpus report out/corpus --tokenizer out/tok            the same, tokens counted before packing

a corpus recipe (YAML; or a recipe with a `corpus:` section):
  sources:
    wiki-fr: {path: data/wiki_fr/, category: fr, licence: CC-BY-SA-4.0}
    web-en:  {path: data/en.jsonl.zst, category: en, text_field: content}
    code:    {path: src/, category: code, weight: 0.5}
    tatoeba: {path: data/tatoeba.tsv, category: parallel}
    po:      {path: locales/, category: parallel, format: po}
  mix: {fr: 0.44, en: 0.44, code: 0.095, parallel: 0.024}
  eval_sets: {flores: eval/flores.jsonl}
  executor: {kind: slurm, partition: cpu, time: "04:00:00", mem_per_cpu_gb: 2, sbatch_args: {account: abc}}
rerunning after a kill (or scancel) resumes from datatrove's completion markers; the output is the same as one
clean run, on any executor. docs/cluster.md walks through Slurm and Ray.
"""


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from fournil.cli import NON_NEGATIVE, POSITIVE, SEED, Stage, integer

    stage = Stage(subparsers, common, "corpus", epilog=EPILOG,
                  help="clean, filter, deduplicate and mix FR/EN/code/parallel text; pack it into shards",
                  description="The corpus stage on datatrove: readers for jsonl(.gz/.zst), parquet, text, parallel "
                  "pairs (x.en/x.fr, TSV, .po), NFC and boilerplate clean-up, PII scrubbing, FR/EN language routing, "
                  "French-aware quality filters, MinHash and exact dedup, decontamination, mixing, packed shards.")
    run = stage.verb("run", cmd_run, force="discard a previous run in --out and start over")
    run.add_argument("config", nargs="?", help="corpus recipe YAML (or a recipe with a `corpus:` section)")
    run.add_argument("--out", type=Path, required=True, help="corpus directory to write")
    run.add_argument("--sample", action="store_true", help="use the embedded sample corpus as the sources")
    run.add_argument("--executor", choices=["local", "slurm", "ray"],
                     help="where the stages run (default: the recipe's corpus.executor.kind, else local)")
    run.add_argument("--partition", help="slurm partition (default: the recipe's, else the cluster's default)")
    run.add_argument("--wait", action="store_true",
                     help="slurm: follow the jobs to the end with a progress bar (default: return once submitted)")
    run.add_argument("--workers", type=integer(1, 1024),
                     help="tasks running at once (default: local, all cores; slurm and ray, no limit)")
    run.add_argument("--tasks", type=integer(1, 100_000),
                     help="datatrove tasks per stage (default: one per file; local: at most 4 per worker)")
    run.add_argument("--max-errors", type=integer(-1), default=100,
                     help="bad input records tolerated before the run stops (-1: no limit)")

    pack = stage.verb("pack", cmd_pack, force=True)
    pack.add_argument("corpus", type=Path, help="corpus directory written by `fournil corpus run`")
    pack.add_argument("tokenizer", type=Path, help="tokenizer directory (or its tokenizer.json)")
    pack.add_argument("--out", type=Path, required=True, help="shards directory to write")
    pack.add_argument("--seq-len", type=POSITIVE, default=2048, help="tokens per training sample")
    pack.add_argument("--seed", type=SEED, help="shuffle and validation seed (default: the corpus recipe's)")
    pack.add_argument("--val-docs", type=NON_NEGATIVE, help="held-out documents per language (default: the recipe's)")
    pack.add_argument("--tokens-per-shard", type=POSITIVE, default=1 << 24,
                      help="tokens per shard file (more than --seq-len)")

    report = stage.verb("report", cmd_report)
    report.add_argument("corpus", type=Path, help="corpus directory")
    report.add_argument("--shards", type=Path, help="shards directory: adds the mixed token counts from its index")
    report.add_argument("--tokenizer", type=Path,
                        help="tokenizer directory (or tokenizer.json): counts the tokens of docs/ exactly")


def cmd_run(args: argparse.Namespace) -> None:
    """run the whole chain from sources to a corpus directory

    Read every source, clean, route by language, filter, decontaminate, deduplicate, and write
    docs/<category>.jsonl.gz, rejects/, stats.json and the datasheet. Killed and rerun, it resumes."""
    from fournil.corpus.pipeline import load_config, run, sample_config, submit

    if bool(args.config) == bool(args.sample):
        raise UsageError("give a corpus recipe or --sample (one of them)")
    config = sample_config() if args.sample else load_config(args.config)
    overrides = {k: v for k, v in (("kind", args.executor), ("partition", args.partition)) if v is not None}
    config = dataclasses.replace(config, executor=dataclasses.replace(config.executor, **overrides))
    if config.executor.kind == "slurm" and not args.wait:
        from fournil.corpus.executors import describe_submission

        jobs = submit(config, args.out, workers=args.workers, tasks=args.tasks, max_errors=args.max_errors,
                      force=args.force)
        if args.json:
            print_json({"out": str(args.out), "jobs": jobs})
        elif jobs:
            print_table("Slurm jobs", [(k, str(v)) for k, v in jobs.items()])
        for line in describe_submission(args.out.resolve(), jobs) if jobs else []:
            log.info("%s", line)
        return
    stats = run(config, args.out, workers=args.workers, tasks=args.tasks, max_errors=args.max_errors,
                force=args.force)
    log.info("wrote %s (%s documents kept)", args.out,
             f"{sum(c['documents'] for c in stats['categories'].values()):,}")
    if args.json:
        print_json({k: v for k, v in stats.items() if k != "sources"} | {"out": str(args.out)})


def cmd_pack(args: argparse.Namespace) -> None:
    """tokenise a corpus directory and write shuffled, packed training shards

    Tokenise docs/ with a tokenizer directory's tokenizer.json, hold out a validation stream per language,
    apply the mix (repeats per source), shuffle by seed and write shards the train stage reads."""
    from fournil.corpus.pack import pack

    claim_output(args.out, "fournil.corpus.shards", inputs=[args.corpus, args.tokenizer], force=args.force)
    index = pack(args.corpus, args.tokenizer, args.out, seq_len=args.seq_len, seed=args.seed,
                 val_docs=args.val_docs, tokens_per_shard=args.tokens_per_shard)
    if args.json:
        print_json(index)


def cmd_report(args: argparse.Namespace) -> None:
    """write DATASHEET.md, datasheet.json and datasheet.png for a corpus directory

    Per source and category: bytes, documents, tokens (with --tokenizer or --shards), share of the mix,
    upsampling factor, rejects by reason, language-ID confusion, length histograms, input errors,
    decontamination."""
    from fournil.corpus.report import write_report

    data = write_report(args.corpus, shards=args.shards, tokenizer=args.tokenizer)
    if "tokens_note" in data:
        log.info("no token counts in the datasheet: %s", data["tokens_note"])
    if args.json:
        print_json(data)
