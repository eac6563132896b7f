"""Bad numbers never start work: every numeric option of every verb, and every numeric recipe field, refuses
NaN, ±inf and values outside its range with exit 2 naming it; loaders compare config.json with the tensors first.

The options are found by walking `fournil`'s own argparse tree, so an option added later is covered without
touching this file (and one declared with a bare `type=int`/`float` fails `test_every_numeric_option_is_checked`).
A handful of real CLI runs reproduce the reported instances, each under a timeout so that a hang fails.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import shutil
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fournil.cli import Keyed, Number, build_parser
from fournil.recipe import Recipe, RecipeError, find_recipe, parse_recipe
from tests.reliability.conftest import assert_clean_failure, fournil

SETTINGS = settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
PARSER = build_parser()
FAST = 60  # seconds: every refusal below comes before any real work, so this only ever catches a hang


# --- the options, from the parser tree ------------------------------------------------------------------------

def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, child in action.choices.items():
            yield from leaves(child, (*path, name))


def name_of(action: argparse.Action) -> str:
    """As argparse names an argument in its errors."""
    return "/".join(action.option_strings) or action.metavar or action.dest


ALL = [(path, parser, action) for path, parser in leaves(PARSER) for action in parser._actions]
NUMERIC = [(path, parser, action) for path, parser, action in ALL if isinstance(action.type, Number | Keyed)]
IDS = [f"{' '.join(path)} {name_of(action)}" for path, _, action in NUMERIC]


def test_every_numeric_option_is_checked():
    """A bare int/float type lets NaN, 0 or -7 through; a number default with no type leaves the value a string."""
    raw = [f"{' '.join(path)} {name_of(a)}" for path, _, a in ALL
           if (a.type in (int, float) and not a.choices)
           or (a.type is None and type(a.default) in (int, float) and a.nargs != 0)]
    assert not raw, f"give these a fournil.cli.Number type: {raw}"
    assert len(NUMERIC) >= 50, IDS  # the walk found the verbs (52 options when written)


def argv(path: tuple[str, ...], parser: argparse.ArgumentParser, action: argparse.Action, text: str) -> list[str]:
    if isinstance(action.type, Keyed):
        text = f"fr={text}"
    if action.option_strings:
        return [*path, f"{action.option_strings[-1]}={text}"]  # `=`: argparse would read `-inf` as an option
    before = [a for a in parser._actions if not a.option_strings and a is not action]
    before = before[:[a for a in parser._actions if not a.option_strings].index(action)]
    return [*path, *("x" for _ in before), "--", text]  # `--`: a positional `-inf` is a value, not an option


def parse(args: list[str]) -> tuple[int, argparse.Namespace | None, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return 0, PARSER.parse_args(args), err.getvalue()
        except SystemExit as exc:
            return int(exc.code or 0), None, err.getvalue()


def number(action: argparse.Action) -> Number:
    return action.type.number if isinstance(action.type, Keyed) else action.type


def show(kind: type, value: float) -> str:
    return str(value) if kind is int else repr(float(value))


def bad_values(n: Number) -> st.SearchStrategy[str]:
    """Text that must be refused: not finite, not a number of the kind, or beyond an end (at it when open)."""
    options = [st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e999", "", "abc", "0x10",
                                "1" + "0" * 5000])]
    if n.kind is int:
        options.append(st.sampled_from(["1.5", "1e3", "2.0"]))
    if n.low is not None:
        if n.kind is int:
            options.append(st.integers(max_value=n.low - 1).map(str))
            options.append(st.just(str(-(10**30))))
        else:
            options.append(st.floats(max_value=n.low, exclude_max=not n.low_open, allow_nan=False,
                                     allow_infinity=False).map(repr))
    if n.high is not None:
        if n.kind is int:
            options.append(st.integers(min_value=n.high + 1).map(str))
            options.append(st.just(str(10**400)))
        else:
            options.append(st.floats(min_value=n.high, exclude_min=not n.high_open, allow_nan=False,
                                     allow_infinity=False).map(repr))
    return st.one_of(options)


def good_values(n: Number) -> st.SearchStrategy[float]:
    """Values that must be accepted and returned as they are: both closed ends, anything between, huge ints
    where there is no upper end."""
    if n.kind is int:
        return st.integers(min_value=n.low, max_value=n.high if n.high is not None else 10**400)
    return st.floats(min_value=n.low, max_value=n.high, exclude_min=n.low_open, exclude_max=n.high_open,
                     allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize("path, parser, action", NUMERIC, ids=IDS)
@SETTINGS
@given(data=st.data())
def test_values_beyond_the_range_exit_2_naming_the_option(path, parser, action, data):
    text = data.draw(bad_values(number(action)))
    code, _, err = parse(argv(path, parser, action, text))
    assert code == 2, (text, err)
    assert f"argument {name_of(action)}" in err, err


@pytest.mark.parametrize("path, parser, action", NUMERIC, ids=IDS)
@SETTINGS
@given(data=st.data())
def test_values_in_the_range_are_taken_exactly(path, parser, action, data):
    n = number(action)
    value = data.draw(good_values(n))
    code, ns, err = parse(argv(path, parser, action, show(n.kind, value)))
    assert code in (0, 2), err
    if code == 2:  # another required argument is missing; the number itself was taken
        assert f"argument {name_of(action)}" not in err, err
        return
    got = getattr(ns, action.dest)
    got = got[-1] if isinstance(got, list) else got
    assert got == (("fr", value) if isinstance(action.type, Keyed) else value)
    assert type(got if not isinstance(got, tuple) else got[1]) is n.kind


def test_help_states_every_range():
    for path, parser, action in NUMERIC:
        text = " ".join(parser.format_help().split())  # unwrapped
        assert " ".join(number(action).describe().split()) in text, (path, name_of(action))


# --- recipe fields ----------------------------------------------------------------------------------------------

RECIPE = yaml.safe_load(find_recipe("scaling-ladder").read_text(encoding="utf-8"))
RECIPE["sft"] = {"steps": 10, "warmup_steps": 2, "seq_len": 256, "batch_tokens": 4096, "micro_batch_size": 4}
RECIPE["corpus"] = {"sources": {"web": {"path": "web.jsonl", "category": "fr"}}}
RECIPE["plan"] = {"available_tokens": {"fr": 1.0e9}}
# fields where 0 means something (off, none, the first id, a share of nothing); every other numeric field has no
# meaning at 0, and no numeric field has one below 0
ZERO_OK = {
    "corpus.mix.fr", "corpus.seed", "corpus.min_lang_score", "corpus.min_code_score", "corpus.min_words",
    "corpus.min_avg_word_length", "corpus.max_symbol_word_ratio", "corpus.max_bullet_lines_ratio",
    "corpus.max_ellipsis_lines_ratio", "corpus.min_alpha_words_ratio", "corpus.min_stop_words",
    "corpus.max_dup_line_ratio", "corpus.max_dup_line_char_ratio", "corpus.max_top_2gram_ratio",
    "corpus.max_top_3gram_ratio", "corpus.max_top_4gram_ratio", "corpus.max_dup_5gram_ratio",
    "corpus.max_dup_10gram_ratio", "corpus.min_line_punct_ratio", "corpus.max_short_line_ratio",
    "corpus.max_newline_word_ratio", "corpus.val_docs",
    "tokenizer.weights.fr", "tokenizer.n_reserved", "tokenizer.seed",
    "model.bos_token_id", "model.eos_token_id", "model.pad_token_id",
    "eval.num_fewshot", "eval.seed",
    "plan.available_tokens.fr", "plan.gpus", "ladder.max_steps",
    *(f"{s}.{k}" for s in ("train", "sft") for k in (
        "min_lr_ratio", "betas[0]", "betas[1]", "weight_decay", "grad_clip", "warmup_steps", "eval_interval",
        "checkpoint_interval", "peak_flops", "replay", "seed")),
}


def numeric_keys(cls: type = Recipe, prefix: str = "") -> list[str]:
    """Every numeric leaf of the schema as a dotted key: dataclass fields, one entry of each mapping and list."""
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
        inner = [a for a in typing.get_args(hint) if a is not type(None)] if optional else [hint]
        hint, key = inner[0], prefix + f.name
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if dataclasses.is_dataclass(hint):
            keys += numeric_keys(hint, key + ".")
        elif origin is dict and dataclasses.is_dataclass(args[1]):
            keys += numeric_keys(args[1], f"{key}.web.")
        elif origin is dict and args[1] in (int, float):
            keys.append(f"{key}.fr")
        elif origin is list and dataclasses.is_dataclass(args[0]):
            keys += numeric_keys(args[0], f"{key}[0].")
        elif origin is tuple and args[0] in (int, float):
            keys += [f"{key}[0]", f"{key}[1]"]
        elif hint in (int, float):
            keys.append(key)
    return keys


NUMERIC_KEYS = numeric_keys()


def with_value(key: str, value: object) -> dict:
    """The base recipe with `key` (`train.betas[0]`, `ladder.rungs[0].dim`) set to value."""
    data = copy.deepcopy(RECIPE)
    *parents, leaf = [int(p[1:-1]) if p.startswith("[") else p for p in key.replace("[", ".[").split(".")]
    target = data
    for part in parents:
        target = target[part] if isinstance(part, int) else target.setdefault(part, {})
    target[leaf] = value
    return data


def refused(key: str, value: object) -> list[str]:
    """The problem keys that name `key` (itself or the field holding it) when the recipe sets it to value."""
    try:
        parse_recipe(yaml.safe_dump(with_value(key, value)), source="r.yaml")
    except RecipeError as exc:
        return [k for _, k, _ in exc.problems if key == k or key.startswith((k + ".", k + "["))]
    return []


def test_the_base_recipe_is_valid():
    parse_recipe(yaml.safe_dump(RECIPE), source="r.yaml")
    assert len(NUMERIC_KEYS) >= 70, NUMERIC_KEYS
    assert set(NUMERIC_KEYS) >= ZERO_OK, ZERO_OK - set(NUMERIC_KEYS)


@pytest.mark.parametrize("key", NUMERIC_KEYS)
def test_every_numeric_recipe_field_has_a_range(key):
    for value in (-1, float("nan"), float("inf"), -(10**30)):
        assert refused(key, value), f"{key}: {value} accepted"
    if key not in ZERO_OK:
        assert refused(key, 0), f"{key}: 0 accepted"


# --- the reported instances, as a user runs them ----------------------------------------------------------------

@pytest.fixture(scope="module")
def packable(tmp_path_factory) -> tuple[Path, Path]:
    from tests.corpus import pack_golden

    return pack_golden.build_corpus(tmp_path_factory.mktemp("pack") / "corpus"), pack_golden.TOKENIZER


@pytest.mark.parametrize("flags", [["--tokens-per-shard", "0"], ["--tokens-per-shard", "64", "--seq-len", "64"]],
                         ids=["zero", "below-a-sample"])
def test_pack_refuses_shards_that_cannot_hold_a_sample(packable, tmp_path, flags):
    """Before the fix 0 wrote empty shard files forever, and 64 wrote shards of zero samples."""
    corpus, tokenizer = packable
    result = fournil("corpus", "pack", str(corpus), str(tokenizer), "--out", str(tmp_path / "out"), *flags,
                     timeout=FAST)
    assert_clean_failure(result, "--tokens-per-shard", code=2)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag, value", [("--tasks", "-1"), ("--workers", "0"), ("--max-errors", "-7")])
def test_corpus_run_refuses_counts_out_of_range(tmp_path, flag, value):
    """-1 tasks ended in KeyError; 0 workers and -7 errors silently meant all cores and no limit."""
    result = fournil("corpus", "run", "--sample", "--out", str(tmp_path / "out"), f"{flag}={value}", timeout=FAST)
    assert_clean_failure(result, flag, code=2)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--temperature", "--top-p", "--repetition-penalty", "--min-p"])
def test_generate_refuses_nan_before_loading_the_model(tiny_dir, flag):
    result = fournil("generate", str(tiny_dir), "Bonjour", f"{flag}=nan", timeout=FAST)
    assert_clean_failure(result, flag, code=2)
    assert "loading" not in result.stderr


def test_serve_refuses_a_cache_larger_than_memory(tiny_dir):
    """10⁷ slots of 256 tokens need a 1.2 TiB cache: refused with the need and what is free, before loading."""
    result = fournil("serve", str(tiny_dir), "--slots", "10000000", "--context", "256", "--port", "0", timeout=FAST)
    assert_clean_failure(result, "--slots 10000000", "KV cache of 1.19 TiB", "available", "slots fit", code=2)


def test_the_slot_cache_checks_again_once_the_dtype_is_known():
    """serve estimates from config.json; the cache itself refuses in the dtype it is given, before torch.zeros."""
    import torch

    from fournil.console import UsageError
    from fournil.serve.batching import SlotCache
    from tests.conftest import TINY

    with pytest.raises(UsageError, match=r"--slots 10000000 × --context 256 needs a KV cache of 1\.19 TiB"):
        SlotCache(TINY, 10**7, 256, torch.float32)
    assert SlotCache(TINY, 4, 256, torch.float32).keys.shape == (2, 4, 2, 256, 16)


# --- loaders compare config.json with the tensors before building -----------------------------------------------

@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    from fournil.lm.config import ModelConfig
    from fournil.lm.hf import save_model
    from fournil.lm.llama import Llama

    directory = tmp_path_factory.mktemp("small") / "model"
    save_model(Llama(ModelConfig(dim=64, n_layers=2, n_heads=4, ffn_dim=128, vocab_size=96, max_seq_len=64)),
               directory)
    return directory


def million_layers(directory: Path) -> None:
    config = json.loads((directory / "config.json").read_text())
    config["num_hidden_layers"] = 10**6
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("bits", [8, 4])
def test_a_quantised_model_claiming_a_million_layers_is_refused_fast(small_model, tmp_path, bits):
    """Before the fix the loader built a million layers on the meta device (1.9 GB and counting)."""
    from fournil.infer.quantize import quantize

    quantised = quantize(small_model, tmp_path / "q", bits)
    million_layers(quantised)
    result = fournil("generate", str(quantised), "hi", timeout=FAST)
    assert_clean_failure(result, "config.json describes", "parameters", code=2)


def test_quantize_refuses_a_config_that_does_not_match_its_weights(small_model, tmp_path):
    source = tmp_path / "src"
    shutil.copytree(small_model, source)
    million_layers(source)
    result = fournil("quantize", str(source), str(tmp_path / "out"), timeout=FAST)
    assert_clean_failure(result, "config.json describes", code=2)
    assert not (tmp_path / "out").exists()


def _quantised_variant(small_model: Path, tmp_path: Path, bits: int, change) -> Path:
    from safetensors.torch import load_file, save_file

    from fournil.infer.quantize import quantize

    out = quantize(small_model, tmp_path / "q", bits, 32)
    state = load_file(out / "model.safetensors")
    change(state)
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("bits, change, needle", [
    (8, lambda s: s.update({"model.layers.0.mlp.up_proj.weight_scale": s["model.layers.0.mlp.up_proj.weight_scale"][:5]}),
     "up_proj.weight_scale: expected a float [128]"),
    (8, lambda s: s.update({"model.layers.1.self_attn.q_proj.weight": s["model.layers.1.self_attn.q_proj.weight"].float()}),
     "q_proj.weight: expected a 2-d torch.int8 matrix"),
    (8, lambda s: s.pop("model.layers.0.self_attn.k_proj.weight_scale"), "k_proj.weight_scale: missing"),
    (4, lambda s: s.update({"model.layers.0.mlp.down_proj.weight": s["model.layers.0.mlp.down_proj.weight"][:, :16].clone()}),
     "down_proj.weight_scale: expected a float [64, 1]"),
    (8, lambda s: s.update({"model.norm.weight": s["model.norm.weight"][:3]}), "shape mismatches"),
    (8, lambda s: s["model.layers.0.mlp.up_proj.weight_scale"].__setitem__(0, float("nan")), "non-finite"),
], ids=["int8-scale-shape", "int8-float-weight", "int8-missing-scale", "int4-cut-matrix", "norm-shape", "nan-scale"])
def test_hostile_quantised_tensors_are_named(small_model, tmp_path, bits, change, needle):
    from fournil.console import UsageError
    from fournil.lm.quantized import load_quantized

    directory = _quantised_variant(small_model, tmp_path, bits, change)
    with pytest.raises(UsageError) as info:
        load_quantized(directory)
    assert needle in str(info.value), str(info.value)
