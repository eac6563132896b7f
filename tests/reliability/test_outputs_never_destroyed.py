"""No verb destroys existing work: output paths drawn in every relation to the verb's inputs and to other artifacts.

One world of real artifacts is built once (sources, corpus, tokenizer, model, GGUF, int8 model, shards, a
training run, a bake recipe, a folder of user files). Hypothesis then draws a verb and an output path that is one
of its inputs, inside one, contains one, reaches one through a symlink or `..`, holds another kind of artifact,
holds user files, is a plain file, or holds a finished output of the same verb, with and without --force. Every
draw must end in exit 2 with a message naming the rule, and every file of the world must be byte-identical after.
The verbs run in-process through `fournil.cli.main`, as a user's argv.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from fournil.cli import main

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TEXTS = Path(__file__).parents[1] / "tokenizer" / "data"
EVAL_DATA = Path(__file__).parents[2] / "fournil" / "eval" / "fixtures"
TINY = """\
name: tiny
tokenizer: {vocab_size: 300}
model: {dim: 32, n_layers: 1, n_heads: 4, ffn_dim: 64, vocab_size: 300, max_seq_len: 64}
train: {lr: 1.0e-2, warmup_steps: 1, steps: 2, seq_len: 32, batch_tokens: 128, micro_batch_size: 4, log_interval: 1,
        eval_interval: 2, checkpoint_interval: 2, eval_tokens: 64, peak_flops: 1.0e9}
"""


def corpus_sources(world: Path) -> str:
    return (f"sources:\n  fr: {{path: {world / 'sources' / 'fr'}, category: fr}}\n"
            f"  en: {{path: {world / 'sources' / 'en.jsonl'}, category: en}}\n")


def cli(*argv) -> int:
    return main([str(a) for a in argv] + ["-q"])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Every kind of artifact, made by the real verbs (the eval results by the manifest writer the runner uses)."""
    from fournil.artifacts import write_json, write_manifest
    from fournil.lm.hf import save_model
    from fournil.lm.llama import Llama
    from fournil.recipe import load_recipe
    from fournil.train.loop import train

    w = tmp_path_factory.mktemp("world")
    fr, en = (TEXTS / "fr.txt").read_text().split("\n\n"), (TEXTS / "en.txt").read_text().split("\n\n")
    (w / "sources" / "fr").mkdir(parents=True)
    for i in range(2):
        (w / "sources" / "fr" / f"part{i}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in fr[i::2]))
    (w / "sources" / "en.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in en))
    (w / "recipes").mkdir()
    (w / "recipes" / "corpus.yaml").write_text(corpus_sources(w))
    (w / "recipes" / "tiny.yaml").write_text(TINY)
    (w / "recipes" / "bake.yaml").write_text(TINY.replace("tokenizer:", "corpus:\n  " + corpus_sources(w).replace(
        "\n  ", "\n    ").rstrip() + "\ntokenizer:"))
    assert cli("tokenizer", "train", w / "tok", "--text", f"fr={TEXTS / 'fr.txt'}", f"en={TEXTS / 'en.txt'}",
               "--vocab-size", 300, "--no-sentencepiece") == 0
    recipe = load_recipe(w / "recipes" / "tiny.yaml")
    save_model(Llama(recipe.model), w / "model")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        shutil.copyfile(w / "tok" / name, w / "model" / name)
    assert cli("export", "gguf", w / "model", w / "model.gguf", "--type", "f32") == 0
    assert cli("quantize", w / "model", w / "int8") == 0
    assert cli("corpus", "run", w / "recipes" / "corpus.yaml", "--out", w / "corpus", "--workers", 1,
               "--tasks", 1) == 0
    assert cli("corpus", "pack", w / "corpus", w / "tok", "--out", w / "shards", "--seq-len", 32,
               "--val-docs", 1) == 0
    train(recipe, w / "shards", w / "run")
    (w / "evals").mkdir()
    write_json(w / "evals" / "french_bench_xnli.json", {"task": "french_bench_xnli"})
    write_manifest(w / "evals", producer="fournil.eval", model=str(w / "model"))
    (w / "user" / "docs").mkdir(parents=True)
    (w / "user" / "docs" / "README.md").write_text("the user's own notes\n")
    (w / "user" / "notes.txt").write_text("not ours\n")
    shutil.copytree(EVAL_DATA / "french_bench_xnli", w / "evaldata" / "french_bench_xnli")
    (w / "links").mkdir()
    return w


# verb → (argv with OUT as the output, its inputs, the artifact kind it writes, whether it continues its own output)
def verbs(w: Path) -> dict[str, tuple[list, list[Path], str | None, bool]]:
    fr_dir, en_file = w / "sources" / "fr", w / "sources" / "en.jsonl"
    tiny = w / "recipes" / "tiny.yaml"
    return {
        "corpus run": (["corpus", "run", w / "recipes" / "corpus.yaml", "--out", "OUT"], [fr_dir, en_file],
                       "corpus", True),
        "corpus pack": (["corpus", "pack", w / "corpus", w / "tok", "--out", "OUT"], [w / "corpus", w / "tok"],
                        "shards", False),
        "tokenizer train": (["tokenizer", "train", "OUT", "--text", f"fr={fr_dir}", f"en={en_file}"],
                            [fr_dir, en_file], "tok", False),
        "model init": (["model", "init", tiny, "OUT"], [tiny], "model", False),
        "model convert": (["model", "convert", w / "model", "OUT"], [w / "model"], "model", False),
        "import gguf": (["import", "gguf", w / "model.gguf", "OUT"], [w / "model.gguf"], "model", False),
        "export gguf": (["export", "gguf", w / "model", "OUT"], [w / "model"], "model.gguf", False),
        "quantize": (["quantize", w / "model", "OUT"], [w / "model"], "int8", False),
        "train pretrain": (["train", "pretrain", tiny, "--shards", w / "shards", "--out", "OUT"],
                           [tiny, w / "shards"], "run", False),
        "train export": (["train", "export", w / "run", "OUT"], [w / "run"], "model", False),
        "eval run": (["eval", "run", w / "model", "--tasks", "french_bench_xnli", "--data", w / "evaldata",
                      "--out", "OUT", "--limit", 2], [w / "model", w / "evaldata"], "evals", True),
        "bake": (["bake", w / "recipes" / "bake.yaml", "--out", "OUT"], [w / "recipes" / "bake.yaml", fr_dir, en_file],
                 None, True),
    }


ARTIFACTS = ("corpus", "tok", "model", "model.gguf", "int8", "shards", "run", "evals")
RELATION_RULES = ("is the input", "lies inside the input", "contains the input")
OTHER_RULES = ("holds a", "is not empty and has no fournil.json", "is a file", "is a directory",
               "is not a GGUF file", "already holds", "already exists")


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root: a file's sha256, a link's target, or 'dir'."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = "-> " + os.readlink(path)
            elif path.is_dir():
                found[key] = "dir"
            else:
                found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def related(out: Path, inputs: list[Path]) -> bool:
    """An independent check of the input rule: equal to, inside, or containing an input, once resolved."""
    o = os.path.realpath(out)
    for source in inputs:
        s = os.path.realpath(source)
        if os.path.commonpath([o, s]) in (o, s):
            return True
    return False


@st.composite
def cases(draw):
    verb = draw(st.sampled_from(sorted(verbs(Path("/")))))
    relation = draw(st.sampled_from(["equal", "inside", "contains", "dotdot", "kind", "user dir", "user file",
                                     "same kind"]))
    return verb, relation, draw(st.integers(0, 7)), draw(st.booleans()), draw(st.booleans())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases())
@example(("corpus run", "user dir", 0, True, False))  # issue 25: `--force` deleted docs/README.md
@example(("corpus run", "inside", 0, True, False))  # --out inside a source folder
@example(("corpus run", "kind", 2, False, False))  # --out on a model directory
@example(("corpus pack", "equal", 0, False, False))  # --out = the corpus folder
@example(("export gguf", "inside", 0, False, False))  # `export gguf M M/...` writes into the model
@example(("model init", "same kind", 0, False, False))  # over an existing model directory
@example(("import gguf", "kind", 2, False, False))
def test_no_verb_destroys_existing_work(world, capsys, case):
    verb, relation, pick, force, through_link = case
    event(f"{verb}: {relation}")
    argv, inputs, own, resumes = verbs(world)[verb]
    if relation in ("equal", "inside", "contains", "dotdot"):
        source = inputs[pick % len(inputs)]
        out = {"equal": source, "inside": source / "new", "contains": source.parent,
               "dotdot": source / ".." / source.name}[relation]
    elif relation == "kind":
        others = [a for a in ARTIFACTS if a != own]
        out = world / others[pick % len(others)]
    elif relation == "user dir":
        out = world / "user"
    elif relation == "user file":
        out = world / "user" / "notes.txt"
    else:  # a finished output of the very verb, without --force: only a verb that continues its own may go on
        if own is None or resumes:
            return
        out, force = world / own, False
    if through_link and relation != "inside":
        link = world / "links" / f"{len(os.listdir(world / 'links'))}"
        link.symlink_to(out)
        out = link
    if verb in ("corpus run", "tokenizer train", "model init", "model convert", "import gguf", "export gguf",
                "quantize", "train export", "corpus pack") and force:
        argv = [*argv, "--force"]
    before = snapshot(world)
    capsys.readouterr()
    code = main([str(out) if a == "OUT" else str(a) for a in argv] + ["-q"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2, (verb, relation, out, err)
    rules = RELATION_RULES if related(out, inputs) else OTHER_RULES
    assert any(rule in err for rule in rules), (verb, relation, out, err)
    assert snapshot(world) == before, (verb, relation, out)


def test_force_replaces_only_the_verbs_own_output(world, tmp_path, capsys):
    """--force goes ahead over the same verb's finished output; an unfinished one needs no --force."""
    tiny = world / "recipes" / "tiny.yaml"
    out = tmp_path / "m"
    assert cli("model", "init", tiny, out) == 0
    first = (out / "model.safetensors").read_bytes()
    assert cli("model", "init", tiny, out, "--seed", 1) == 2
    assert "--force replaces it" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == first
    assert cli("model", "init", tiny, out, "--seed", 1, "--force") == 0
    assert (out / "model.safetensors").read_bytes() != first
    manifest = json.loads((out / "fournil.json").read_text())
    assert manifest["producer"] == "fournil.model" and manifest["complete"] and manifest["seed"] == 1
    # a killed write leaves `complete: false`: the same verb takes it over without --force
    (out / "fournil.json").write_text(json.dumps({**manifest, "complete": False}))
    assert cli("model", "init", tiny, out, "--seed", 2) == 0


def test_a_training_run_is_continued_or_left_alone(world, tmp_path, capsys):
    """Without --resume a second `train` into a run would restart it over its checkpoints: refused."""
    run = tmp_path / "run"
    shutil.copytree(world / "run", run)
    before = snapshot(run)
    assert cli("train", world / "recipes" / "tiny.yaml", "--shards", world / "shards", "--out", run) == 2
    assert "--resume continues it" in capsys.readouterr().err
    assert snapshot(run) == before
