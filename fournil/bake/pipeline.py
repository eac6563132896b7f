"""`fournil bake`: the whole CroissantLLM recipe in one command, each step skipped when already done.

    corpus → tokenizer → shards → pretrain → sft → eval → export (HF dir, GGUF, REPORT.md)

Every step writes its own artifact directory under OUT and, once complete, a marker `OUT/.bake/<step>.json`
holding the hash of its inputs (the recipe sections it reads and its upstream steps' output fingerprints) and a
fingerprint of what it wrote. A rerun skips a step whose marker matches; a killed bake therefore resumes at the
first unfinished step, and `--force STEP` reruns from STEP on. The orchestrator sits above the stages: it is the
one module allowed to import all of them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fournil import artifacts
from fournil.console import UsageError, is_quiet, print_json

log = logging.getLogger(__name__)

STEPS = ("corpus", "tokenizer", "shards", "pretrain", "sft", "eval", "export")
TRAINING = ("pretrain", "sft")  # the steps a bake may run on every rank of a torchrun (train.sbatch --bake)
MARKERS = ".bake"
CHAT_EXAMPLES = Path(__file__).parents[1] / "train" / "chat_examples.jsonl"


@dataclass
class Step:
    name: str
    reads: Callable[[Any], Any]  # the part of the recipe this step depends on
    run: Callable[[Any, Path], None]  # (recipe, out) → writes OUT/<name>/


def _corpus(recipe, out: Path) -> None:
    from fournil.corpus.pipeline import config_hash, run, sample_config

    config = recipe.corpus if recipe.corpus.sources else sample_config(**_corpus_overrides(recipe.corpus))
    marker = out / "corpus" / "work" / "config.sha256"
    # same recipe: resume from datatrove's completion markers; another recipe: start over
    changed = marker.is_file() and marker.read_text().strip() != config_hash(config)
    run(config, out / "corpus", force=changed)


def _corpus_overrides(config) -> dict:
    """A recipe without sources bakes the embedded sample with the recipe's thresholds and mix."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "sources"}


def _tokenizer(recipe, out: Path) -> None:
    from fournil.tokenizer.export import save
    from fournil.tokenizer.train import train

    docs = out / "corpus" / "docs"
    inputs = {c: [docs / f"{c}.jsonl.gz"] for c in recipe.tokenizer.weights if (docs / f"{c}.jsonl.gz").is_file()}
    if not inputs:
        raise UsageError(f"{docs}: no documents for the tokenizer's categories {sorted(recipe.tokenizer.weights)}")
    tokenizer, stats = train(recipe.tokenizer, inputs)
    save(tokenizer, out / "tokenizer", manifest={"training_text": stats}, fertility=_fertility(tokenizer))


def _fertility(tokenizer) -> list[dict]:
    """Ours vs the reference tokenizers that are installed, on the held-out test pairs (never trained on)."""
    from fournil.corpus import iter_sample
    from fournil.tokenizer.report import fertility, from_tokenizer, load_encoder

    test = [p for p in iter_sample("parallel") if p.get("split") == "test"]
    texts = {"fr": [p["fr"] for p in test], "en": [p["en"] for p in test]}
    results = [fertility(from_tokenizer(tokenizer), texts)]
    for spec in ("mistral:v1", "smollm2"):
        try:
            results.append(fertility(load_encoder(spec), texts))
        except UsageError as exc:
            log.info("fertility: %s left out (%s)", spec, exc)
    return results


def _shards(recipe, out: Path) -> None:
    from fournil.corpus.pack import pack

    pack(out / "corpus", out / "tokenizer", out / "shards", seq_len=recipe.train.seq_len)


def _pretrain(recipe, out: Path) -> None:
    from fournil.train.loop import train

    train(recipe, out / "shards", out / "pretrain", resume=True)


def _sft(recipe, out: Path) -> None:
    from fournil.corpus import SAMPLE_DIR
    from fournil.train.sft import finetune

    finetune(recipe, out / "tokenizer", out / "pretrain" / "model", out / "sft", chat=[CHAT_EXAMPLES],
             pairs=[SAMPLE_DIR / "parallel.jsonl.gz"], resume=True, replay_from=out / "shards")


def _eval(recipe, out: Path) -> None:
    from fournil.bake.evaluate import evaluate_bake

    evaluate_bake(recipe, out)


def _export(recipe, out: Path) -> None:
    from fournil.infer.gguf_io import export_gguf

    model = out / "model"
    tmp = out / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(out / "sft" / "model", tmp)
    shutil.rmtree(model, ignore_errors=True)
    tmp.rename(model)
    export_gguf(model, out / "model-q8_0.gguf", qtype="q8_0")


PIPELINE = [
    Step("corpus", lambda r: r.corpus, _corpus),
    Step("tokenizer", lambda r: r.tokenizer, _tokenizer),
    Step("shards", lambda r: r.train.seq_len, _shards),
    Step("pretrain", lambda r: (r.model, r.train), _pretrain),
    Step("sft", lambda r: r.sft, _sft),
    Step("eval", lambda r: r.eval, _eval),
    Step("export", lambda r: None, _export),
]


def fingerprint(directory: Path) -> str:
    """What a step wrote, summarised: its manifest (which records counts and hashes), or the file listing."""
    manifest = directory / artifacts.MANIFEST
    if manifest.is_file():
        return artifacts.sha256_file(manifest)
    listing = sorted((str(p.relative_to(directory)), p.stat().st_size) for p in directory.rglob("*") if p.is_file())
    return artifacts.sha256_json(listing)


def bake(recipe, out: str | Path, force: str | None = None, only: str | None = None) -> dict[str, str]:
    """Run the pipeline into `out`; returns {step: "ran" | "skipped"}.

    Under torchrun (WORLD_SIZE > 1) every rank runs one training step (`only` in TRAINING) whose earlier steps
    are done; rank 0 alone writes the markers."""
    from fournil.recipe import to_dict

    out = Path(out)
    if force is not None and force not in STEPS:
        raise UsageError(f"--force {force!r}: not a step; choose one of: {', '.join(STEPS)}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    main = int(os.environ.get("RANK", "0")) == 0
    if world > 1 and (only not in TRAINING or force is not None):
        raise UsageError(f"under torchrun (WORLD_SIZE={world}) a bake runs one training step on every rank: "
                         f"--only {' or --only '.join(TRAINING)}, without --force")
    info = log.info if main else lambda *args: None
    markers = out / MARKERS
    if main:
        markers.mkdir(parents=True, exist_ok=True)
    if force is not None:
        for name in STEPS[STEPS.index(force):]:
            (markers / f"{name}.json").unlink(missing_ok=True)
    outcome, upstream, started, ran = {}, "", time.perf_counter(), {}
    for i, step in enumerate(PIPELINE, 1):
        inputs = artifacts.sha256_json({"reads": _plain(step.reads(recipe), to_dict), "upstream": upstream,
                                        "recipe_name": recipe.name})
        marker_path = markers / f"{step.name}.json"
        marker = json.loads(marker_path.read_text()) if marker_path.is_file() else {}
        if marker.get("inputs") == inputs:
            info("[%d/%d] %s: up to date, skipped", i, len(PIPELINE), step.name)
            outcome[step.name] = "skipped"
        else:
            if world > 1 and step.name != only:  # the ranks would all run it, each on its own
                raise UsageError(f"{out}: step {step.name} is not done, and under torchrun only --only {only} "
                                 f"runs; run `fournil bake … --only {step.name}` without torchrun first")
            if main:
                marker_path.unlink(missing_ok=True)
            info("[%d/%d] %s …  %s", i, len(PIPELINE), step.name,
                 _eta(time.perf_counter() - started, ran, [s.name for s in PIPELINE[i - 1:]]))
            t0, cpu0 = time.perf_counter(), _cpu_seconds()
            step.run(recipe, out)
            seconds = time.perf_counter() - t0
            outcome[step.name], ran[step.name] = "ran", seconds
            if not main:  # rank 0 records the step; the other ranks' work ends with it
                break
            target = out / step.name if (out / step.name).is_dir() else out / "model"
            marker = {"inputs": inputs, "outputs": fingerprint(target), "seconds": round(seconds, 1),
                      "cpu_seconds": round(_cpu_seconds() - cpu0, 1)}
            artifacts.write_json(marker_path, marker)
            info("[%d/%d] %s done in %.0f s", i, len(PIPELINE), step.name, seconds)
        upstream = artifacts.sha256_json([upstream, marker["outputs"]])
        if only == step.name:
            break
    if not main:
        return outcome
    if (markers / f"{STEPS[-1]}.json").is_file():
        from fournil.bake.report import write_report

        report = write_report(recipe, out)
        log.info("bake finished in %.0f s: %s", time.perf_counter() - started, out)
        if not is_quiet():  # plain lines, not log records: the commands must not wrap or carry a log prefix
            sys.stderr.write(NEXT.format(out=out, report=report) + "\n")
    else:
        log.info("bake stopped after %s in %.0f s: %s", only, time.perf_counter() - started, out)
    return outcome


def _cpu_seconds() -> float:
    """CPU time of this process and of the children it waited for (not datatrove's workers, which a forkserver
    starts): on a shared machine a training step's wall time also measures the neighbours, its CPU time does not."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# A step's usual share of a bake's time (the demo recipe on a 2-core CPU), for the estimate of the time left.
SHARE = {"corpus": 0.107, "tokenizer": 0.024, "shards": 0.012, "pretrain": 0.672, "sft": 0.091, "eval": 0.089,
         "export": 0.005}


def _eta(elapsed: float, ran: dict[str, float], remaining: list[str]) -> str:
    """'elapsed 3:05, about 7 min left': the steps run so far, scaled by their usual share, predict the rest."""
    text = f"elapsed {int(elapsed) // 60}:{int(elapsed) % 60:02d}"
    done_share = sum(SHARE[name] for name in ran)
    if done_share < 0.01:  # too little run yet to scale from
        return text
    left = sum(ran.values()) / done_share * sum(SHARE[name] for name in remaining)
    return text + (f", about {left / 60:.0f} min left" if left >= 90 else f", about {left:.0f} s left")


NEXT = """next, try what the bake made:
  fournil chat {out}/model                                 talk to it (French or English)
  fournil generate {out}/model "La boulangerie"            continue a text
  echo "The bread is warm." | fournil translate {out}/model --from en --to fr --chat
  fournil serve {out}/model                                OpenAI-compatible API and a web chat page
  llama-cli -m {out}/model-q8_0.gguf -p "Bonjour"          the same model in llama.cpp
  report: {report}"""


def _plain(value: Any, to_dict) -> Any:
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, tuple):
        return [_plain(v, to_dict) for v in value]
    return value


def recipe_inputs(spec: str, recipe) -> list[Path | None]:
    """What a bake reads from outside its output: the recipe file and the corpus's sources and eval sets."""
    from fournil.corpus.pipeline import input_paths

    return [Path(spec) if Path(spec).is_file() else None, *input_paths(recipe.corpus)]


EPILOG = """\
examples:
  fournil bake                               the demo: recipes/demo.yaml into out/demo
  fournil bake recipes/demo.yaml --out out/demo --force pretrain     rerun from pretraining on
  fournil bake croissant-1.3b --plan         what the paper-scale bake would need, without running it
  fournil bake demo --plan --emit out/demo-slurm --out out/demo --set plan.gpus=0 --set plan.slurm.cpus_per_task=1
                                             the bake as 7 Slurm jobs on CPU nodes, 1 CPU each;
                                             out/demo-slurm/submit.sh submits them, each after the one before
                                             has succeeded (docs/cluster.md: "The whole bake on Slurm")
"""


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from fournil.cli import verb

    parser = verb(subparsers, common, "bake", cmd_bake, epilog=EPILOG)
    parser.add_argument("recipe", nargs="?", default="demo", help="recipe file or preset name")
    parser.add_argument("--out", type=Path, help="output directory (default: out/<recipe name>)")
    parser.add_argument("--force", choices=STEPS, help="rerun this step and every later one")
    parser.add_argument("--only", choices=STEPS, help="stop after this step")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a recipe value, e.g. plan.gpus=0 (repeatable; YAML syntax for values)")
    parser.add_argument("--plan", action="store_true",
                        help="print the resources the recipe needs (its `plan` section), run nothing")
    slurm = parser.add_argument_group("Slurm (with --plan)")
    slurm.add_argument("--emit", type=Path, metavar="DIR",
                       help="write the bake as a chain of Slurm jobs into DIR (one per step, resources from the "
                       "recipe's plan section) and DIR/submit.sh, which submits them; --out is the bake's output")
    slurm.add_argument("--partition", help="Slurm partition of every job (default: plan.slurm.partition, else the "
                       "cluster's default)")
    slurm.add_argument("--account", help="Slurm account of every job (default: plan.slurm.account)")
    slurm.add_argument("--sbatch-arg", action="append", metavar="OPTION",
                       help="one more sbatch option for every job, as one word: --sbatch-arg=--qos=normal "
                       "(repeatable; after plan.slurm.sbatch_args)")


def cmd_bake(args: argparse.Namespace) -> None:
    """the whole recipe: corpus → tokenizer → pretrain → SFT → eval → export

    Run every stage of a recipe into one output directory. Steps whose inputs are unchanged are skipped,
    so a killed bake resumes where it stopped."""
    from fournil.recipe import load_recipe
    from fournil.train.cli import parse_overrides

    # repeatable options default to None, so that --help shows no "(default: [])"
    args.set, args.sbatch_arg = args.set or [], args.sbatch_arg or []
    recipe = load_recipe(args.recipe, overrides=parse_overrides(args.set))
    if args.emit is None and (args.partition or args.account or args.sbatch_arg):
        raise UsageError("--partition, --account and --sbatch-arg describe the jobs of --emit DIR: add it")
    if args.emit is not None and not args.plan:
        raise UsageError("--emit DIR writes the plan as Slurm jobs: use it with --plan")
    if args.plan and (args.force or args.only):
        raise UsageError("--plan runs nothing: --force and --only are for a bake that runs")
    out = args.out or Path("out") / recipe.name
    if args.plan:
        from fournil.bake.plan import plan, print_plan

        result = plan(recipe)
        if args.emit is not None:
            result["emitted"] = _emit(args, recipe, out)
        if args.json:
            print_json(result)
            return
        print_plan(result)
        if args.emit is not None:
            log.info("wrote %d Slurm jobs into %s; submit them with %s (docs/cluster.md)",
                     len(result["emitted"]["jobs"]), args.emit, result["emitted"]["submit"])
        return
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, the other ranks would see rank 0's first files
        artifacts.claim_output(out, "fournil.bake", inputs=recipe_inputs(args.recipe, recipe), resume=True,
                               signature=(MARKERS,))
    outcome = bake(recipe, out, force=args.force, only=args.only)
    if args.json:
        print_json({"out": str(out), "steps": outcome})


def _emit(args: argparse.Namespace, recipe, out: Path) -> dict:
    """The command-line cluster options over the recipe's plan.slurm, checked, then the jobs written."""
    import shlex

    from fournil.bake.config import sbatch_option, slurm_name
    from fournil.bake.slurm import emit

    slurm = recipe.plan.slurm
    for option, value in (("--partition", args.partition), ("--account", args.account)):
        if value is not None and not slurm_name(value):
            raise UsageError(f"{option} {value!r}: not a Slurm {option[2:]} name")
    for arg in args.sbatch_arg:
        if not sbatch_option(arg):
            raise UsageError(f"--sbatch-arg {arg!r}: not an sbatch option written as one word, like "
                             "--sbatch-arg=--qos=normal")
    slurm.partition = args.partition or slurm.partition
    slurm.account = args.account or slurm.account
    slurm.sbatch_args = [*slurm.sbatch_args, *args.sbatch_arg]
    command = ["fournil", "bake", args.recipe, "--plan", "--emit", str(args.emit), "--out", str(out),
               *[arg for pair in args.set for arg in ("--set", pair)],
               *[f"--partition={args.partition}"] * bool(args.partition),
               *[f"--account={args.account}"] * bool(args.account), *[f"--sbatch-arg={a}" for a in args.sbatch_arg]]
    jobs = emit(recipe, args.recipe, args.emit, out, overrides=args.set, emitted_by=shlex.join(command),
                partition_option="--partition" if args.partition else "plan.slurm.partition")
    return {"dir": str(args.emit), "submit": str(Path(args.emit) / "submit.sh"),
            "jobs": [{"step": job.step, "sbatch": [*job.options, *job.command]} for job in jobs]}
