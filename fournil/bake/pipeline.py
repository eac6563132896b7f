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
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fournil import artifacts
from fournil.console import UsageError

log = logging.getLogger(__name__)

STEPS = ("corpus", "tokenizer", "shards", "pretrain", "sft", "eval", "export")
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
    from fournil.console import UsageError
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
    """Run the pipeline into `out`; returns {step: "ran" | "skipped"}."""
    from fournil.recipe import to_dict

    out = Path(out)
    if force is not None and force not in STEPS:
        raise UsageError(f"--force {force!r}: not a step; choose one of: {', '.join(STEPS)}")
    markers = out / MARKERS
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
            log.info("[%d/%d] %s: up to date, skipped", i, len(PIPELINE), step.name)
            outcome[step.name] = "skipped"
        else:
            marker_path.unlink(missing_ok=True)
            log.info("[%d/%d] %s …  %s", i, len(PIPELINE), step.name,
                     _eta(time.perf_counter() - started, ran, [s.name for s in PIPELINE[i - 1:]]))
            t0 = time.perf_counter()
            step.run(recipe, out)
            seconds = time.perf_counter() - t0
            target = out / step.name if (out / step.name).is_dir() else out / "model"
            marker = {"inputs": inputs, "outputs": fingerprint(target), "seconds": round(seconds, 1)}
            artifacts.write_json(marker_path, marker)
            log.info("[%d/%d] %s done in %.0f s", i, len(PIPELINE), step.name, seconds)
            outcome[step.name], ran[step.name] = "ran", seconds
        upstream = artifacts.sha256_json([upstream, marker["outputs"]])
        if only == step.name:
            break
    if (markers / f"{STEPS[-1]}.json").is_file():
        from fournil.bake.report import write_report

        report = write_report(recipe, out)
        log.info("bake finished in %.0f s: %s", time.perf_counter() - started, out)
        log.info(NEXT.format(out=out, report=report))
    else:
        log.info("bake stopped after %s in %.0f s: %s", only, time.perf_counter() - started, out)
    return outcome


# A step's usual share of a bake's time (the demo recipe on a 2-core CPU), for the estimate of the time left.
SHARE = {"corpus": 0.045, "tokenizer": 0.01, "shards": 0.005, "pretrain": 0.8, "sft": 0.1, "eval": 0.035,
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
  fournil bake                               the demo: recipes/demo.yaml into out/demo (≈ 10 min on 2 CPU cores)
  fournil bake recipes/demo.yaml --out out/demo --force pretrain     rerun from pretraining on
  fournil bake croissant-1.3b --plan         what the paper-scale bake would need, without running it
"""


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from fournil.cli import HelpFormatter

    parser = subparsers.add_parser(
        "bake", parents=[common], formatter_class=HelpFormatter, epilog=EPILOG,
        help="the whole recipe: corpus → tokenizer → pretrain → SFT → eval → export",
        description="Run every stage of a recipe into one output directory. Steps whose inputs are unchanged "
        "are skipped, so a killed bake resumes where it stopped.",
    )
    parser.add_argument("recipe", nargs="?", default="demo", help="recipe file or preset name")
    parser.add_argument("--out", type=Path, help="output directory (default: out/<recipe name>)")
    parser.add_argument("--force", choices=STEPS, help="rerun this step and every later one")
    parser.add_argument("--only", choices=STEPS, help="stop after this step")
    parser.add_argument("--plan", action="store_true", help="print the resources the recipe needs, run nothing")
    parser.set_defaults(handler=cmd_bake)


def cmd_bake(args: argparse.Namespace) -> None:
    from fournil.console import print_json
    from fournil.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    if args.plan:
        from fournil.bake.plan import plan, print_plan

        result = plan(recipe)
        if args.json:
            print_json(result)
        else:
            print_plan(result)
        return
    out = args.out or Path("out") / recipe.name
    artifacts.claim_output(out, "fournil.bake", inputs=recipe_inputs(args.recipe, recipe), resume=True,
                           signature=(MARKERS,))
    outcome = bake(recipe, out, force=args.force, only=args.only)
    if args.json:
        print_json({"out": str(out), "steps": outcome})
