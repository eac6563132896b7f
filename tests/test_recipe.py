"""Recipes: every shipped recipe parses; every kind of mistake fails early with file, line, key and fix."""

import pytest

from fournil.console import UsageError
from fournil.recipe import RecipeError, find_recipe, list_presets, load_recipe, parse_recipe, to_dict

GOOD = """\
name: t
tokenizer:
  vocab_size: 300
model:
  dim: 64
  n_layers: 2
  n_heads: 4
  ffn_dim: 176
  vocab_size: 300
  max_seq_len: 128
train:
  lr: 3e-4
  seq_len: 64
  batch_tokens: 256
  warmup_steps: 5
  steps: 10
"""


def bad(text: str) -> str:
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, source="r.yaml")
    return str(err.value)


@pytest.mark.parametrize("name", list_presets())
def test_every_shipped_recipe_parses_and_round_trips(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert parse_recipe(__import__("yaml").safe_dump(to_dict(recipe))) == recipe


def test_good_recipe():
    recipe = parse_recipe(GOOD)
    assert recipe.model.dim == 64 and recipe.train.lr == 3e-4 and recipe.train.betas == (0.9, 0.95)
    assert isinstance(recipe.train.lr, float)


def test_unknown_key_names_file_line_and_suggestion():
    text = bad(GOOD.replace("  n_heads: 4", "  n_head: 4"))
    assert "r.yaml:7: model.n_head: unknown key; did you mean 'n_heads'?" in text
    assert "allowed: dim, n_layers, n_heads" in text


def test_unknown_section():
    assert "r.yaml:17: tokeniser: unknown key" in bad(GOOD + "tokeniser: {}\n")


def test_wrong_type():
    assert "r.yaml:6: model.n_layers: expected int, got str 'two'" in bad(GOOD.replace("n_layers: 2", "n_layers: two"))
    assert "model.dim: expected int, got float 64.5" in bad(GOOD.replace("dim: 64", "dim: 64.5"))
    text = bad(GOOD.replace("  dim: 64", "  dim: 64\n  tie_embeddings: 'yes please'"))
    assert "r.yaml:6: model.tie_embeddings: expected bool, got str 'yes please'" in text


def test_bool_is_not_an_int():
    assert "model.n_layers: expected int, got bool True" in bad(GOOD.replace("n_layers: 2", "n_layers: true"))


def test_wrong_value_lists_allowed_values():
    text = bad(GOOD + "  schedule: cosin\n")
    assert "r.yaml:17: train.schedule: 'cosin' is not allowed; choose one of: cosine, wsd" in text


def test_cross_field_rules_name_the_field():
    assert "model.n_heads: dim=64 is not divisible by n_heads=5" in bad(GOOD.replace("n_heads: 4", "n_heads: 5"))
    assert "model.n_kv_heads: must divide n_heads=4, got 3" in bad(GOOD.replace("n_heads: 4", "n_heads: 4\n  n_kv_heads: 3"))
    assert "train.seq_len: 512 exceeds model.max_seq_len=128" in bad(GOOD.replace("seq_len: 64", "seq_len: 512")
                                                                      .replace("batch_tokens: 256", "batch_tokens: 1024"))
    assert "train.batch_tokens: 100 is not a multiple of seq_len=64" in bad(GOOD.replace("batch_tokens: 256", "batch_tokens: 100"))


def test_all_problems_reported_at_once():
    text = bad(GOOD.replace("dim: 64", "dim: big").replace("steps: 10", "stepz: 10"))
    assert "2 problems" in text and "model.dim" in text and "train.stepz" in text


def test_missing_required_key():
    assert "name: required key is missing" in bad(GOOD.replace("name: t\n", ""))


def test_tuple_length_checked():
    assert "train.betas: expected a list of 2, got list [0.9]" in bad(GOOD + "  betas: [0.9]\n")


def test_section_must_be_mapping():
    assert "model: expected a mapping, got int 3" in bad("name: t\nmodel: 3\n")


def test_invalid_yaml_names_line():
    with pytest.raises(UsageError, match=r"r.yaml:4: not valid YAML"):
        parse_recipe("name: t\nmodel:\n  dim: [1, 2\n  x: 1\n", source="r.yaml")


def test_overrides_are_validated():
    assert parse_recipe(GOOD, overrides={"model.dim": 128}).model.dim == 128
    with pytest.raises(RecipeError, match=r"model.dim: expected int"):
        parse_recipe(GOOD, overrides={"model.dim": "x"})


def test_unknown_recipe_lists_presets():
    with pytest.raises(UsageError, match=r"known presets: .*croissant-1.3b"):
        find_recipe("croissant-9b")


def test_mapping_values_are_typed_and_vocab_sizes_must_agree():
    recipe = parse_recipe(GOOD.replace("  vocab_size: 300\nmodel", "  vocab_size: 300\n  weights: {fr: 1, en: 2}\nmodel"))
    assert recipe.tokenizer.weights == {"fr": 1.0, "en": 2.0}
    text = bad(GOOD.replace("  vocab_size: 300\nmodel", "  vocab_size: 300\n  weights: {fr: lots}\nmodel"))
    assert "tokenizer.weights.fr: expected float, got str 'lots'" in text
    assert "model.vocab_size: 512 differs from tokenizer.vocab_size=300" in bad(GOOD.replace("  vocab_size: 300\n  max", "  vocab_size: 512\n  max"))


def test_a_problem_under_an_empty_key_still_names_its_line():
    """Found by the recipe fuzzer in CI: the empty key is spelled '' in messages and had lost its line."""
    text = """name: x
model: {dim: 64, n_layers: 2, n_heads: 4, ffn_dim: 128, vocab_size: 32000}
tokenizer: {vocab_size: 32000}
corpus:
  sources:
    '':
"""
    with pytest.raises(RecipeError) as error:
        parse_recipe(text, "f.yaml")
    assert error.value.problems == [(6, "corpus.sources.''", "expected a mapping, got nothing")]
