"""The `fournil` command: help with examples everywhere, exit codes 0/1/2, JSON on stdout, logs on stderr."""

import json
import subprocess
import sys

import pytest

from fournil.cli import build_parser, main, subcommands, with_default_action


def verbs(parser=None, prefix=()):
    """Every leaf command, e.g. ('model', 'info')."""
    parser = parser or build_parser()
    children = subcommands(parser)
    for name, sub in children.items():
        yield from verbs(sub, (*prefix, name))
    if not children:
        yield prefix


def test_entry_point_runs_as_a_process():
    result = subprocess.run([sys.executable, "-m", "fournil", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("fournil ")


def test_every_verb_is_a_stage_action_and_aliases_are_the_same_parser():
    """Each leaf parser is named `fournil <stage> <action>` (bake and serve are stages that are their own verb) and
    is reached by that path; a short top-level name (`fournil generate`) reaches the very same parser object, so a
    verb has one definition, one handler and one option set however it is called."""
    root = build_parser()
    reached: dict[int, list[tuple[str, ...]]] = {}
    parsers = {}
    for path in verbs(root):
        parser = root
        for name in path:
            parser = subcommands(parser)[name]
        reached.setdefault(id(parser), []).append(path)
        parsers[id(parser)] = parser
    handlers = [parser.get_default("handler") for parser in parsers.values()]
    assert all(handlers) and len(set(handlers)) == len(handlers), "two parsers share a handler: a copied verb"
    for key, parser in parsers.items():
        canonical = tuple(parser.prog.split()[1:])
        assert canonical in reached[key], f"{parser.prog} is not reached by its own name"
        assert len(canonical) >= 2 or canonical in {("bake",), ("serve",)}, f"{parser.prog}: not `<stage> <action>`"
        for path in reached[key]:  # the full name, or the short one without the stage
            assert path in (canonical, canonical[1:]), f"{' '.join(path)} reaches {parser.prog}"
    aliases = {path: reached[id_] for id_, paths in reached.items() for path in paths if len(paths) > 1}
    assert ("generate",) in aliases and ("export", "gguf") in aliases  # the short names still exist
    assert [" ".join(path) for path in verbs(root) if path[0] == "infer"] == [
        "infer generate", "infer chat", "infer translate", "infer quantize", "infer export gguf", "infer import gguf"]


@pytest.mark.parametrize("short", [["generate", "m", "hi"], ["chat", "m"], ["export", "gguf", "m", "o.gguf"]])
def test_a_short_name_parses_as_its_stage_verb(short):
    parser = build_parser()
    full, alias = vars(parser.parse_args(["infer", *short, "--json"])), vars(parser.parse_args([*short, "--json"]))
    assert full.pop("stage") == "infer" and full.pop("action") == short[0] and alias.pop("stage") == short[0]
    assert full == alias


def test_a_stage_default_action_is_inserted_only_before_a_non_action():
    parser = build_parser()
    assert with_default_action(parser, ["train", "demo", "--out", "x"]) == ["train", "pretrain", "demo", "--out", "x"]
    for argv in (["train", "sft", "demo"], ["train", "--help"], ["train"], ["model", "info"], []):
        assert with_default_action(parser, argv) == argv


@pytest.mark.parametrize("verb", list(verbs()), ids=" ".join)
def test_every_verb_has_help_with_examples(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*verb, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--quiet" in out and "--json" in out


def test_model_info_json(capsys):
    assert main(["model", "info", "croissant-1.3b", "--json", "--batch-size", "2", "--seq-len", "1024"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["parameters"]["total"] == 1_345_423_360
    assert data["memory"]["batch_size"] == 2 and data["memory"]["seq_len"] == 1024


def test_model_info_table(capsys):
    assert main(["model", "info", "croissant-10m"]) == 0
    out = capsys.readouterr().out
    assert "10,522,880" in out and "AdamW" in out and "activations" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["model", "info", "croissant-9b"], "recipe not found"),
    (["model", "info", "croissant-1m", "--batch-size", "0"], "argument --batch-size: must be an integer ≥ 1"),
    (["model", "convert", "/nonexistent/dir", "/tmp/x"], "no such model directory"),
])
def test_bad_input_exits_2_with_a_message(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses an option's value itself
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_bad_recipe_exits_2_naming_file_line_and_key(tmp_path, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("name: bad\nmodel:\n  dim: 64\n  n_heads: 4\n  layers: 2\n")
    assert main(["model", "info", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert f"{recipe}:5: model.layers: unknown key; did you mean 'n_layers'?" in err.replace("\n", "")


def test_usage_error_exits_2():
    with pytest.raises(SystemExit) as exit_:
        main(["model", "info"])
    assert exit_.value.code == 2


def test_init_info_convert_verify(tmp_path, capsys):
    model_dir, bf16_dir = tmp_path / "m", tmp_path / "m-bf16"
    assert main(["model", "init", "croissant-1m", str(model_dir), "--seed", "3", "--quiet"]) == 0
    assert capsys.readouterr().err == ""  # --quiet: nothing on stderr when all is well
    assert main(["model", "info", str(model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"]["total"] == 1_377_408
    assert main(["model", "convert", str(model_dir), str(bf16_dir), "--dtype", "bfloat16", "-q"]) == 0
    assert json.loads((bf16_dir / "config.json").read_text())["dtype"] == "bfloat16"
    assert main(["model", "verify", str(model_dir), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["max_abs_diff"] < 1e-5 and result["transformers_class"] == "LlamaForCausalLM"
