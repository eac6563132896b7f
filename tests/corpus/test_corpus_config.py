"""The corpus recipe: parsed into `CorpusConfig`, every problem reported with its line, paths made absolute."""

from __future__ import annotations

import pytest

from fournil.corpus.config import CorpusConfig, SourceConfig
from fournil.corpus.pipeline import load_config
from fournil.recipe import RecipeError


def test_relative_paths_resolve_against_the_file(tmp_path):
    (tmp_path / "c.yaml").write_text("sources:\n  a: {path: data/fr, category: fr, weight: 2}\n"
                                     "eval_sets: {fb: eval/fb.jsonl}\nmin_words: 20\n", encoding="utf-8")
    config = load_config(tmp_path / "c.yaml")
    assert config.sources["a"] == SourceConfig(path=str(tmp_path / "data" / "fr"), category="fr", weight=2.0)
    assert config.eval_sets == {"fb": str(tmp_path / "eval" / "fb.jsonl")} and config.min_words == 20


def test_a_recipe_corpus_section_is_read(tmp_path):
    (tmp_path / "r.yaml").write_text("name: x\ncorpus:\n  sources:\n    a: {path: d, category: en}\n",
                                     encoding="utf-8")
    assert load_config(tmp_path / "r.yaml").sources["a"].category == "en"


def test_every_problem_is_reported_with_its_line(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "sources:\n"
        "  a: {path: d, category: german}\n"
        "  b: {path: d, category: fr, format: po}\n"
        "mix: {fr: -1, klingon: 1}\n"
        "min_alpha_words_ratio: 1.5\n"
        "min_word: 3\n", encoding="utf-8")
    with pytest.raises(RecipeError) as err:
        load_config(tmp_path / "c.yaml")
    text = str(err.value)
    assert "c.yaml:2: sources.a.category: 'german' is not allowed" in text
    assert "sources.b.format: po is a parallel format" in text
    assert "c.yaml:6: min_word: unknown key; did you mean 'min_words'?" in text


def test_check_catches_cross_field_problems():
    problems = dict(CorpusConfig(mix={"fr": -1.0, "xx": 1.0}, max_epochs=0.5, min_words=100, max_words=10).check())
    assert set(problems) == {"mix", "max_epochs", "min_words"}
    assert CorpusConfig().check() == []
