"""`fournil corpus run`: the whole chain as datatrove pipelines, resumable from datatrove's completion markers.

Layout of a corpus directory:
    docs/{fr,en,code,parallel}.jsonl.gz   cleaned, deduplicated documents, sorted by id (gzip mtime 0: byte-stable)
    rejects/<step>/*.jsonl.gz             every dropped document with `filter_reason` in its metadata
    stats.json                            counts per source and category, rejects by reason, language-ID confusion,
                                          length histograms, input errors, decontamination, the mix plan
    work/, logs/                          intermediate files and datatrove logs, stats and completion markers
    fournil.json                          manifest, written last

Stages (built once by `build_stages`, run by datatrove's local, Slurm or Ray executor, see executors.py; a rerun
skips every task that has its completion marker):
    1 filter   read sources → clean → language routing → quality → decontaminate → work/filtered, and the
               MinHash signatures of what it writes (stage 1 of datatrove's 4-stage near-dup dedup)
    2-3        MinHash buckets, clusters
    4 dedup    drop the near-duplicates → work/dedup: each task's documents sorted by id, their exact keys sorted
               by (key, id), as runs on disk (runs.py)
    5 finalise (one task) exact dedup on normalised text by merging those runs, docs/, stats.json, the datasheet,
               manifest; it streams: memory holds one record per run and the counts, never the documents
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from fournil import artifacts
from fournil.console import FournilError, UsageError
from fournil.corpus.config import CATEGORIES, CorpusConfig, ExecutorConfig
from fournil.corpus.mix import format_plan, plan_mix

log = logging.getLogger(__name__)
DOCS = "docs"
STATS = "stats.json"
_WORD = re.compile(r"\w+")
CLUSTER_RANGE_BYTES = 64 << 20  # the default task count on a cluster: a task per file or per 64 MiB of a large one
# what the local executor's workers run, imported once in the forkserver they are forked from
TASK_MODULES = ("numpy", "orjson", "xxhash", "datatrove.pipeline.dedup.minhash", "datatrove.pipeline.readers.jsonl",
                "datatrove.pipeline.writers.jsonl", "fournil.corpus.filters", "fournil.corpus.readers",
                "fournil.corpus.dedup", "fournil.corpus.runs", "fournil.corpus.pipeline", "fournil.corpus.executors")
LENGTH_BINS = [0, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000]  # UTF-8 bytes


def load_config(path: str | Path) -> CorpusConfig:
    """A corpus YAML file (top-level keys are `CorpusConfig` fields) or a recipe with a `corpus:` section.

    Relative source and eval-set paths are resolved against the file's folder.
    """
    import yaml

    from fournil.recipe import RecipeError, _key_lines, build

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        lines = _key_lines(yaml.compose(text, Loader=yaml.SafeLoader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as exc:  # RecursionError: `[[[[…`
        raise UsageError(f"{path}: cannot read corpus recipe: {exc}") from exc
    prefix = ""
    if isinstance(data, dict) and "corpus" in data:
        data, prefix = data["corpus"], "corpus."
    problems: list = []
    config = build(CorpusConfig, data, prefix, lines, problems)
    if problems:
        raise RecipeError(str(path), problems)
    base = path.resolve().parent
    sources = {name: dataclasses.replace(s, path=str(base / Path(s.path).expanduser()))
               for name, s in config.sources.items()}
    evals = {name: str(base / Path(p).expanduser()) for name, p in config.eval_sets.items()}
    return dataclasses.replace(config, sources=sources, eval_sets=evals)


def sample_config(**overrides) -> CorpusConfig:
    """The embedded sample corpus (fr, en, code, parallel) as sources."""
    from fournil.corpus import SAMPLE_DIR
    from fournil.corpus.config import SourceConfig

    sources = {f"sample-{c}": SourceConfig(path=str(SAMPLE_DIR / f"{c}.jsonl.gz"), category=c, licence="see LICENSES")
               for c in CATEGORIES}
    return CorpusConfig(sources=sources, **overrides)


def config_hash(config: CorpusConfig) -> str:
    """What the corpus is made of; `executor` (where it runs) is left out, so a run can move between executors."""
    return artifacts.sha256_json({k: v for k, v in asdict(config).items() if k != "executor"})


def input_paths(config: CorpusConfig) -> list[Path]:
    """What a corpus run reads: each source's folder or file (a glob's or a pair's files), and the eval sets."""
    from fournil.corpus.readers import source_files

    paths = [Path(p) for p in config.eval_sets.values()]
    for source in config.sources.values():
        path = Path(source.path).expanduser()
        files = [path] if path.exists() else [entry.path for entry in source_files(source)]
        paths += files + [f.with_suffix(".fr") for f in files if source.format == "pairs" and f.suffix == ".en"]
    return paths


@dataclass
class Stage:
    """One datatrove pipeline and its task count; its logs and completion markers live in logs/<name>/."""

    name: str
    tasks: int
    pipeline: list


def build_stages(config: CorpusConfig, out: Path, tasks: int, max_errors: int) -> list[Stage]:
    """Every stage of `corpus run`, built once: the same objects go to the local, Slurm or Ray executor."""
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    from fournil.corpus.dedup import FastWords, Signature, SortedRuns
    from fournil.corpus.executors import Finalise, StageReader
    from fournil.corpus.filters import CleanText, Decontaminate, LanguageRouter, QualityFilter
    from fournil.corpus.readers import SourceReader

    work = out / "work"
    reader = SourceReader(config.sources, str(work / "errors"), seed=config.seed, max_errors=max_errors)

    def rejects(step: str):
        return JsonlWriter(str(out / "rejects"), output_filename=f"{step}/${{rank}}.jsonl.gz")

    minhash = MinhashConfig(n_grams=config.minhash_ngrams, num_buckets=config.minhash_buckets,
                            hashes_per_bucket=config.minhash_hashes_per_bucket, seed=config.seed + 1,
                            hash_config=HashConfig(hash_fc="xxhash", precision=64))

    return [
        Stage("filter", tasks, [
            reader,
            CleanText(config, exclusion_writer=rejects("clean")),
            LanguageRouter(config, exclusion_writer=rejects("language")),
            QualityFilter(config, exclusion_writer=rejects("quality")),
            Decontaminate(config, exclusion_writer=rejects("decontaminate")),
            JsonlWriter(str(work / "filtered"), output_filename="${rank}.jsonl", compression=None),
            # MinHash stage 1 on the documents as they are written, not read back in a stage of its own
            Signature(str(work / "minhash" / "signatures"), config=minhash, language=FastWords()),
        ]),
        Stage("minhash-buckets", config.minhash_buckets, [
            MinhashDedupBuckets(str(work / "minhash" / "signatures"), str(work / "minhash" / "buckets"),
                                config=minhash)]),
        Stage("minhash-clusters", 1, [
            MinhashDedupCluster(str(work / "minhash" / "buckets"), str(work / "minhash" / "clusters"),
                                config=minhash)]),
        Stage("dedup", tasks, [
            StageReader(str(work / "filtered"), compression=None),
            MinhashDedupFilter(str(work / "minhash" / "clusters"), exclusion_writer=rejects("minhash")),
            SortedRuns(str(work / "dedup")),
        ]),
        Stage("finalise", 1, [Finalise(config, str(out), max_errors)]),
    ]


def _prepare(config: CorpusConfig, out: Path, *, workers: int | None, tasks: int | None, max_errors: int,
             force: bool) -> tuple[ExecutorConfig, list[Stage] | None]:
    """Check everything (recipe, inputs, the cluster) before any work; the stages to run, or None when `out` is
    already complete for this recipe."""
    from fournil.corpus.executors import preflight
    from fournil.corpus.readers import SourceReader

    if not config.sources:
        raise UsageError("the corpus recipe declares no sources")
    for name, source in config.sources.items():
        if not SourceReader({name: source}, "").files:
            raise UsageError(f"source {name!r}: no files at {source.path}")
    for name, path in config.eval_sets.items():
        if not Path(path).exists():
            raise UsageError(f"eval_sets.{name}: {path} does not exist")
    executor = dataclasses.replace(config.executor, **{k: v for k, v in (("workers", workers), ("tasks", tasks))
                                                       if v is not None})
    for name in ("workers", "tasks"):
        if getattr(executor, name) is not None and getattr(executor, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(executor, name)}")
    executor = preflight(executor)
    digest = config_hash(config)
    marker = out / "work" / "config.sha256"
    # before --force deletes anything: `out` must be a corpus directory (or new), and outside every source
    artifacts.claim_output(out, "fournil.corpus", inputs=input_paths(config), force=force, resume=True,
                           signature=("work/config.sha256",))
    if force:
        for sub in ("work", "logs", "rejects", DOCS):
            shutil.rmtree(out / sub, ignore_errors=True)
        artifacts.mark_incomplete(out, "fournil.corpus")
    if marker.is_file() and marker.read_text().strip() != digest:
        raise UsageError(f"{out} holds a run of a different corpus recipe; use --force to start over, or a new --out")
    manifest = artifacts.read_manifest(out)
    if manifest and manifest.get("complete") and manifest.get("config_sha256") == digest:
        log.info("%s is complete for this recipe; nothing to do", out)
        return executor, None
    if executor.tasks is None:  # a task per file or per range of a large file (see SourceReader.units); locally
        # at most 4 per worker (more only adds start-up time), on a cluster ranges of 64 MiB or more
        local = executor.workers or os.cpu_count() or 1
        reader = SourceReader(config.sources, "")
        tasks = (min(reader.pieces(reader.min_range_bytes), 4 * local) if executor.kind == "local"
                 else reader.pieces(CLUSTER_RANGE_BYTES))
        executor = dataclasses.replace(executor, tasks=max(1, tasks))
    stages = build_stages(config, out, executor.tasks, max_errors)
    # a rerun must split the work as the first run did: task `rank`'s outputs are read back by rank
    plan_path = out / "work" / "stages.json"
    counts = {s.name: s.tasks for s in stages}
    if plan_path.is_file() and (before := json.loads(plan_path.read_text())["tasks"]) != counts \
            and any((out / "logs").glob("*/completions/*")):
        if set(before) != set(counts):
            raise UsageError(f"{out} was started with other stages ({', '.join(before)}; this fournil runs "
                             f"{', '.join(counts)}): use --force to start over, or a new --out")
        raise UsageError(f"{out} was started with {before['filter']} tasks per stage, not {executor.tasks}: "
                         f"rerun with --tasks {before['filter']} (or corpus.executor.tasks), or --force to start over")
    artifacts.write_text(marker, digest + "\n")
    artifacts.write_json(plan_path, {"tasks": counts, "started": time.time(), "executor": executor.kind})
    return executor, stages


def start_forkserver() -> None:
    """Start the forkserver the local executor's pools fork their workers from, with the modules the tasks run
    imported there once rather than again in each worker of each stage. It imports in a process of its own: started
    before the stages are built, its imports overlap the driver's. (Once started, later calls change nothing.)"""
    import multiprocess
    from multiprocess import forkserver

    multiprocess.set_forkserver_preload(list(TASK_MODULES))
    forkserver.ensure_running()


def run(config: CorpusConfig, out: Path, *, workers: int | None = None, tasks: int | None = None,
        max_errors: int = 100, force: bool = False) -> dict:
    """Run every stage into `out` on the recipe's executor and wait for the end; returns stats.json's content.

    `workers` and `tasks` override `config.executor`'s (the CLI's --workers, --tasks)."""
    out = Path(out).resolve()  # cluster tasks do not share our working directory
    if config.executor.kind == "local" and (workers or config.executor.workers or os.cpu_count() or 1) > 1:
        start_forkserver()  # first: its imports overlap ours (these included) instead of following them
    from fournil.corpus import executors

    executor, stages = _prepare(config, out, workers=workers, tasks=tasks, max_errors=max_errors, force=force)
    if stages is not None:
        if executor.kind == "slurm":
            jobs = executors.submit_slurm(out, stages, executor, follow=True)
            executors.follow_slurm(out, stages, jobs, max_errors)
        else:
            executors.run_in_order(out, stages, executor, max_errors)
    stats = json.loads((out / STATS).read_text(encoding="utf-8"))
    if stages is not None:
        for line in format_plan(stats["plan"]):
            log.info("%s", line)
    return stats


def submit(config: CorpusConfig, out: Path, *, workers: int | None = None, tasks: int | None = None,
           max_errors: int = 100, force: bool = False) -> dict[str, int]:
    """Slurm: submit every stage (chained with `depends=`) and return at once; {stage: job id} of what was
    submitted (or is still queued from an earlier submission), {} when `out` is already complete."""
    from fournil.corpus import executors

    out = Path(out).resolve()
    executor, stages = _prepare(config, out, workers=workers, tasks=tasks, max_errors=max_errors, force=force)
    if stages is None:
        return {}
    return executors.submit_slurm(out, stages, executor, follow=False)


def complete(config: CorpusConfig, out: Path, max_errors: int) -> dict:
    """The last stage (a pipeline step, so it runs where the others ran): the bad-input budget, exact dedup,
    docs/, stats.json, the datasheet, and the manifest last."""
    from fournil.corpus.report import write_report

    _raise_input_errors(out / "work" / "errors", max_errors)
    digest = config_hash(config)
    started = json.loads((out / "work" / "stages.json").read_text())["started"]

    def report(stats: dict) -> None:
        stats["seconds"] = round(time.time() - started, 1)
        artifacts.write_json(out / STATS, stats)
        write_report(out)

    stats = finalise(config, out, while_compressing=report)
    artifacts.write_manifest(out, producer="fournil.corpus", config_sha256=digest, config=asdict(config),
                             documents={c: v["documents"] for c, v in stats["categories"].items()})
    return stats


def iter_input_errors(errors_dir: Path) -> Iterator[dict]:
    """Every input error the reader tasks wrote, one at a time (task order, then the order they were met), then
    the files split across tasks that gave nothing at all (see `readers.empty_split_files`)."""
    from fournil.corpus.readers import empty_split_files

    for path in sorted(errors_dir.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            yield from (json.loads(line) for line in f if line.strip())
    yield from empty_split_files(errors_dir / "ranges")


@dataclass
class ErrorSummary:
    """What stats.json and the error budget need of the input errors, gathered without holding them all."""

    total: int
    by_kind: Counter
    first: list[dict]
    by_source: dict[str, Counter]  # source → {"repaired": n, "input_errors": n}


def summarise_input_errors(errors_dir: Path, keep: int = 20) -> ErrorSummary:
    from fournil.corpus.readers import REPAIRED

    summary = ErrorSummary(0, Counter(), [], defaultdict(Counter))
    for err in iter_input_errors(errors_dir):
        summary.total += 1
        summary.by_kind[err["kind"]] += 1
        if len(summary.first) < keep:
            summary.first.append(err)
        summary.by_source[err.get("source")]["repaired" if err["kind"] in REPAIRED else "input_errors"] += 1
    return summary


def _raise_input_errors(errors_dir: Path, max_errors: int) -> None:
    errors = summarise_input_errors(errors_dir, keep=5)
    for err in errors.first:
        log.warning("bad input: %s:%s: %s: %s", err["file"], err["line"], err["kind"], err["detail"])
    if errors.total > 5:
        log.warning("… and %d more bad input records (all in %s)", errors.total - 5, errors_dir)
    if 0 <= max_errors < errors.total:
        first = "".join(f"\n  {e['file']}:{e['line']}: {e['kind']}: {e['detail']}" for e in errors.first[:3])
        raise FournilError(f"{errors.total} bad input records exceed --max-errors {max_errors} "
                           f"({', '.join(f'{k}: {v}' for k, v in errors.by_kind.most_common())}); fix the input or "
                           f"raise the budget, then rerun (finished tasks are kept). First ones:{first}")


def iter_jsonl(paths: list[Path]) -> Iterator[dict]:
    for path in paths:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as f:
            for line in f:
                yield orjson.loads(line)


def exact_key(text: str) -> bytes:
    """Exact-duplicate key: lower-cased words only, so case, spacing and punctuation variants collide."""
    return hashlib.blake2b(" ".join(_WORD.findall(text.lower())).encode(), digest_size=16).digest()


def _duplicate_ids(dedup: Path, scratch: Path) -> Iterator[bytes]:
    """The ids (as `id_key`s, in order) of every document whose exact key a smaller id already has: the keys
    runs merged in (key, id) order, all but the first of each key, sorted again by id through runs."""
    from fournil.corpus.runs import RunWriter, merge

    duplicates = RunWriter(scratch, "duplicates-")
    previous = None
    for record, _ in merge(sorted(dedup.glob("*-keys-*.run")), scratch):
        key = record[:16]
        if key == previous:
            duplicates.add(record[16:])
        previous = key
    for doc_id, _ in merge(duplicates.close(), scratch):
        yield doc_id


def _exact_dedup(out: Path) -> Iterator[tuple[dict, bool]]:
    """Every document of the dedup stage in id order, with whether it is an exact duplicate of a smaller id."""
    from fournil.corpus.runs import merge

    dedup = out / "work" / "dedup"
    with artifacts.scratch_dir(out / "work", "finalise") as scratch:
        duplicates = _duplicate_ids(dedup, scratch)
        next_duplicate = next(duplicates, None)
        for doc_id, line in merge(sorted(dedup.glob("*-docs-*.run")), scratch):
            while next_duplicate is not None and next_duplicate < doc_id:
                next_duplicate = next(duplicates, None)
            yield orjson.loads(line), doc_id == next_duplicate


def finalise(config: CorpusConfig, out: Path, while_compressing=None) -> dict:
    """Exact dedup, write docs/<category>.jsonl.gz sorted by id, and gather every count the datasheet needs.

    One pass over the id-ordered merge of the dedup stage's runs: documents go straight to their category's file,
    counts are accumulated (histograms, not lists of lengths), so memory does not grow with the corpus.
    `while_compressing(stats)` (the datasheet) runs once the counts are known, while the output files' deflate
    threads are still finishing: this one-task stage then keeps two cores busy."""
    import bisect

    from fournil.corpus.filters import eval_ngrams

    sources: dict[str, dict] = {}
    for name, source in sorted(config.sources.items()):
        sources[name] = {"category": source.category, "licence": source.licence, "documents": 0, "bytes": 0,
                         "input_documents": 0, "input_bytes": 0, "rejects": {}, "input_errors": 0, "repaired": 0}
    histograms = {name: [0] * len(LENGTH_BINS) for name in sources}
    confusion: dict[str, Counter] = defaultdict(Counter)
    written: set[str] = set()
    # exact duplicates, counted as they are written (their file is not closed when the rejects are counted)
    exact_counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    exact_confusion: dict[str, Counter] = defaultdict(Counter)
    with contextlib.ExitStack() as files:
        def writer(path: Path) -> _GzWriter:
            return files.enter_context(_GzWriter(path))

        exact = writer(out / "rejects" / "exact" / "00000.jsonl.gz")
        docs: dict[str, _GzWriter] = {}
        for doc, duplicate in _exact_dedup(out):
            meta = doc["metadata"]
            if duplicate:
                meta["filter_reason"] = "exact_duplicate"
                _write_line(exact, doc)
                counts = exact_counts[meta["source"]]
                counts[0] += 1
                counts[1] += meta.get("raw_bytes", len(doc["text"].encode()))
                if "lang" in meta:
                    exact_confusion[meta["category"]][meta["lang"]] += 1
                continue
            category = meta["category"]
            if category not in docs:
                docs[category] = writer(out / DOCS / f"{category}.jsonl.gz")
                written.add(category)
            _write_line(docs[category], {"text": doc["text"], "id": doc["id"], "source": meta["source"],
                                         "lang": meta.get("lang")})
            s = sources[meta["source"]]
            size = len(doc["text"].encode())
            s["documents"] += 1
            s["bytes"] += size
            s["input_documents"] += 1
            s["input_bytes"] += meta.get("raw_bytes", size)
            histograms[meta["source"]][bisect.bisect_right(LENGTH_BINS, size) - 1] += 1
            confusion[category][meta.get("lang", "?")] += 1
        for category in CATEGORIES:
            if category not in written:
                (out / DOCS / f"{category}.jsonl.gz").unlink(missing_ok=True)

        for step_dir in sorted(p for p in (out / "rejects").iterdir() if p.is_dir()):
            if step_dir.name == "exact":  # in the same order as reading their file back would count them
                for name, (n, raw_bytes) in exact_counts.items():
                    sources[name]["rejects"]["exact_duplicate"] = sources[name]["rejects"].get("exact_duplicate", 0) + n
                    sources[name]["input_documents"] += n
                    sources[name]["input_bytes"] += raw_bytes
                for category, langs in exact_confusion.items():
                    confusion[category].update(langs)
                continue
            for doc in iter_jsonl(sorted(step_dir.glob("*.jsonl.gz"))):
                _count_reject(doc, STEP_REASONS.get(step_dir.name, step_dir.name), sources, confusion)
        errors = summarise_input_errors(out / "work" / "errors")
        for name, counts in errors.by_source.items():  # every record read: a document, an input error or held out
            if name in sources:
                sources[name]["repaired"] += counts["repaired"]
                sources[name]["input_errors"] += counts["input_errors"]
        held_out = _step_stats(out, "held_out:")  # `"split": "test"` records: read, neither documents nor errors
        for name, s in sources.items():
            s["held_out"] = held_out.get(f"held_out:{name}", 0)
            s["length_histogram"] = histograms[name]
        sizes = {name: s["bytes"] for name, s in sources.items()}
        plan = plan_mix(sizes, {n: s["category"] for n, s in sources.items()},
                        {n: config.sources[n].weight for n in sources}, config.mix, config.max_epochs)
        plan["unit"] = "bytes"
        for name, s in sources.items():
            s["factor"] = plan["sources"].get(name, {}).get("factor", 0.0)
        categories = {}
        for category in sorted({s["category"] for s in sources.values()}):
            members = [s for s in sources.values() if s["category"] == category]
            rejects: Counter = Counter()
            for s in members:
                rejects.update(s["rejects"])
            categories[category] = {
                "documents": sum(s["documents"] for s in members), "bytes": sum(s["bytes"] for s in members),
                "input_documents": sum(s["input_documents"] for s in members),
                "input_bytes": sum(s["input_bytes"] for s in members), "rejects": dict(rejects),
                "input_errors": sum(s["input_errors"] for s in members),
                "share": plan["categories"].get(category, {}).get("share", 0.0),
                "target": plan["categories"].get(category, {}).get("target", 0.0),
                "length_histogram": [sum(col) for col in zip(*(s["length_histogram"] for s in members), strict=True)],
            }
        decontam = {}
        if config.eval_sets:
            texts = eval_ngrams(config.eval_sets, config.decontam_ngrams)[1]
            for name in sorted(config.eval_sets):
                dropped = sum(s["rejects"].get(f"decontam_{name}", 0) for s in sources.values())
                decontam[name] = {"eval_texts": texts.get(name, 0), "documents_removed": dropped}
        stats = {"sources": sources, "categories": categories, "plan": plan, "length_bins": LENGTH_BINS,
                 "language_confusion": {c: dict(v) for c, v in sorted(confusion.items())},
                 "input_errors": {"total": errors.total, "by_kind": dict(errors.by_kind), "first": errors.first},
                 "decontamination": decontam, "pii": _step_stats(out, "pii_"),
                 "boilerplate_lines": _step_stats(out, "boilerplate_lines").get("boilerplate_lines", 0)}
        if while_compressing is not None:
            while_compressing(stats)
    return stats


STEP_REASONS = {"minhash": "near_duplicate"}  # steps whose rejects carry no `filter_reason` of their own


def _count_reject(doc: dict, default_reason: str, sources: dict, confusion: dict) -> None:
    meta = doc["metadata"]
    s = sources[meta["source"]]
    reason = meta.get("filter_reason", default_reason)
    s["rejects"][reason] = s["rejects"].get(reason, 0) + 1
    s["input_documents"] += 1
    s["input_bytes"] += meta.get("raw_bytes", len(doc["text"].encode()))
    if "lang" in meta:
        confusion[meta["category"]][meta["lang"]] += 1


def _step_stats(out: Path, prefix: str) -> dict[str, int]:
    """Counters our steps sent to datatrove's merged stats (PII replacements, boilerplate lines)."""
    totals: Counter = Counter()
    for path in (out / "logs" / "filter" / "stats").glob("*.json"):
        with contextlib.suppress(ValueError, OSError):
            for step in json.loads(path.read_text(encoding="utf-8")):
                for key, value in step.get("stats", {}).items():
                    if key.startswith(prefix):
                        totals[key] += value.get("total", 0) if isinstance(value, dict) else value
    return dict(totals)


class _GzWriter(contextlib.AbstractContextManager):
    """A gzip file written atomically as a series of members, one per MEMBER bytes of input, deflated on several
    threads at once (zlib releases the GIL) and written in order.

    Concatenated members are one valid gzip stream (gzip, zcat and datatrove read it whole). The members are cut by
    byte count, not by task, and carry mtime 0, so the same documents give the same bytes whatever the task count.
    The one-task `finalise` then merges and counts on one core while its output is compressed on every core."""

    MEMBER = 1 << 20
    LEVEL = 5  # the stage is serial: levels above cost much more time for files hardly smaller
    THREADS = min(4, os.cpu_count() or 1)  # the merge, on one core, is slower than this many deflates

    def __init__(self, path: Path):
        self._atomic = artifacts.atomic_path(path)
        self._raw = open(self._atomic.__enter__(), "wb")  # noqa: SIM115 (closed by __exit__)
        self._buffer = bytearray()
        self._deflate = ThreadPoolExecutor(self.THREADS)
        self._pending: deque[Future] = deque()  # members in file order; memory holds a few, not the output
        self._members = 0

    def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= self.MEMBER:  # a line longer than a member spans several
            self._hand_over(self._buffer[:self.MEMBER])
            del self._buffer[:self.MEMBER]

    def _hand_over(self, chunk) -> None:
        self._pending.append(self._deflate.submit(gzip.compress, bytes(chunk), self.LEVEL, mtime=0))
        self._members += 1
        while len(self._pending) > 2 * self.THREADS or (self._pending and self._pending[0].done()):
            self._raw.write(self._pending.popleft().result())  # raises a deflate error here

    def __enter__(self) -> _GzWriter:
        return self

    def __exit__(self, *exc) -> bool:
        try:
            if exc[0] is None and (self._buffer or not self._members):  # an empty file is still one (empty) member
                self._hand_over(self._buffer)
            self._deflate.shutdown()  # waits for the members handed over
            if exc[0] is None:
                while self._pending:
                    self._raw.write(self._pending.popleft().result())
            self._raw.close()
        except BaseException as error:
            self._raw.close()
            self._atomic.__exit__(type(error), error, error.__traceback__)
            raise
        self._atomic.__exit__(*exc)
        return False


def _write_line(f, record: dict) -> None:
    f.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
