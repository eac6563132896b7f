"""Recipe fuzzing: whatever YAML a user writes, validation answers with a UsageError that says where, or a Recipe.

Any other exception (TypeError, RecursionError, OverflowError…) would reach the user as "unexpected error".
"""

from __future__ import annotations

import copy
import dataclasses
import typing

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fournil.console import UsageError
from fournil.recipe import Recipe, RecipeError, find_recipe, parse_recipe

BASE_TEXT = find_recipe("croissant-1m").read_text(encoding="utf-8")
BASE = yaml.safe_load(BASE_TEXT)
SETTINGS = settings(max_examples=100, deadline=None, database=None, derandomize=True,  # the same cases in CI
                    suppress_health_check=[HealthCheck.too_slow])


def schema_keys(cls: type = Recipe, prefix: str = "") -> list[str]:
    """Every dotted key of the recipe schema (sections and their fields)."""
    keys = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        inner = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(inner[0]):
            keys += schema_keys(inner[0], f"{prefix}{f.name}.")
    return keys


KEYS = schema_keys()
SECTIONS = {""} | {key for key in KEYS if any(k.startswith(key + ".") for k in KEYS)}  # dataclass-typed keys
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=10**30, max_value=10**400),
                    st.floats(), st.text(max_size=12), st.sampled_from(["3e-4", "1e400", "nan", "-0", "0x10", ""]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=4)),
                      max_leaves=12)


def check(text: str, overrides: dict | None = None) -> Recipe | None:
    """Parse; the only acceptable failure is a UsageError whose every line says where."""
    try:
        return parse_recipe(text, source="fuzz.yaml", overrides=overrides)
    except RecipeError as exc:
        for line in str(exc).splitlines()[1:]:
            assert line.strip().startswith("fuzz.yaml"), str(exc)
            assert line.count(": ") >= 2, str(exc)  # source[:line]: key: message
        assert exc.problems and all(key for _, key, _ in exc.problems)
    except UsageError as exc:
        assert str(exc).startswith("fuzz.yaml"), str(exc)
    return None


def set_key(data: dict, dotted: str, value: object) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not isinstance(data.get(part), dict):
            data[part] = {}
        data = data[part]
    data[leaf] = value


def problem_keys(data: object, overrides: dict | None = None) -> list[str] | None:
    """The keys a RecipeError names ([] for a valid recipe, None for another UsageError such as bad YAML)."""
    try:
        parse_recipe(yaml.safe_dump(data, allow_unicode=True), source="fuzz.yaml", overrides=overrides)
    except RecipeError as exc:
        return [key for _, key, _ in exc.problems]
    except UsageError:
        return None
    return []


def names(keys: list[str] | None, key: str) -> bool:
    """Some problem is at `key` or inside it (`model` is named by `model.dim`, `x.rungs` by `x.rungs[0].dim`)."""
    return any(k == key or k.startswith((key + ".", key + "[")) for k in keys or ())


def has_key(data: dict, parts: list[str]) -> bool:
    for part in parts:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def overlap(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def bad_on_its_own(key: str, value: object, override: bool = False) -> bool:
    """`key: value` on the base recipe is reported at `key` even with the cross-field checks of every section
    around it switched off (an unknown key in a section does that), so no other key can excuse it."""
    data = copy.deepcopy(BASE)
    parents = key.split(".")[:-1]
    for depth in range(len(parents) + 1):
        section = ".".join(parents[:depth])
        if section in SECTIONS:
            set_key(data, f"{section}.__probe__" if section else "__probe__", 1)
    if override:
        return names(problem_keys(data, {key: value}), key)
    set_key(data, key, value)
    return names(problem_keys(data), key)


@SETTINGS
@given(st.sampled_from(KEYS), values)
def test_a_wrong_value_anywhere_in_the_schema(key, value):
    data = copy.deepcopy(BASE)
    set_key(data, key, value)
    text = yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
    try:
        parse_recipe(text, source="fuzz.yaml")
    except RecipeError as exc:
        located = [line for line, k, _ in exc.problems if line is not None]
        assert located, str(exc)  # the key is in the file, so at least one problem carries its line
        # the base recipe is valid, so whatever is wrong comes from `key`: a problem names it (or the section that
        # setting it created, e.g. a `ladder` without its rungs), or a cross-field rule such as train.seq_len <=
        # model.max_seq_len says its value
        parts = key.split(".")
        created = next((".".join(parts[:n]) for n in range(1, len(parts)) if not has_key(BASE, parts[:n])), key)
        leaf = parts[-1]
        assert names([k for _, k, _ in exc.problems], created) or any(leaf in m for _, _, m in exc.problems), str(exc)
        check(text)
    except UsageError:
        check(text)


@SETTINGS
@given(st.sampled_from(KEYS), st.sampled_from(KEYS), values, values)
def test_two_wrong_values_are_both_reported(key_a, key_b, value_a, value_b):
    data = copy.deepcopy(BASE)
    set_key(data, key_a, value_a)
    set_key(data, key_b, value_b)
    check(yaml.safe_dump(data, allow_unicode=True))
    reported = problem_keys(data)
    for key, value, other in ((key_a, value_a, key_b), (key_b, value_b, key_a)):
        if not overlap(key, other) and bad_on_its_own(key, value):
            assert names(reported, key), (key, reported)


def assert_names_unknown_sections(document: object) -> None:
    """Every top-level key that is no section of a recipe is reported, not only the first."""
    document = yaml.safe_load(yaml.safe_dump(document, allow_unicode=True))  # keys as the recipe reader sees them
    if isinstance(document, dict):
        reported = problem_keys(document)
        fields = {f.name for f in dataclasses.fields(Recipe)}
        for key in document:
            if key not in fields and reported is not None:
                assert any(k == key or k == repr(key) or k == str(key) for k in reported), (key, reported)


@SETTINGS
@given(values)
def test_any_yaml_document(document):
    check(yaml.safe_dump(document, allow_unicode=True))
    assert_names_unknown_sections(document)


@SETTINGS
@given(st.text(max_size=200))
def test_any_text(text):
    check(text)
    try:
        document = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError):
        return
    assert_names_unknown_sections(document)


@SETTINGS
@given(st.lists(st.tuples(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)),
                          st.sampled_from(["", ".x", ".0", "..", ".dim.x"])), min_size=1, max_size=3),
       st.lists(values, min_size=3, max_size=3))
def test_any_overrides(keys, override_values):
    overrides = {k + suffix: v for (k, suffix), v in zip(keys, override_values, strict=False)}
    check(BASE_TEXT, overrides)
    reported = problem_keys(BASE, overrides)
    for key, value in overrides.items():
        if not any(overlap(key, other) for other in overrides if other != key) and bad_on_its_own(key, value, True):
            assert names(reported, key), (key, reported)


@pytest.mark.parametrize("text", [
    "[" * 5000,  # PyYAML composes recursively: a RecursionError before the fix
    "name: x\nmodel: " + "{a: " * 3000 + "1" + "}" * 3000,
    "name: x\nmodel: {}\ntrain: {lr: .nan}",  # NaN passed every `< 0` check before the fix
    "name: x\nmodel: {}\ncorpus: {mix: {fr: .inf}}",
    "name: x\nmodel: {}\ntrain: {lr: " + "9" * 400 + "}",  # float(int) overflowed before the fix
    "name: x\nmodel: {}\n? [a, b]\n: 1",
    "!!python/object/apply:os.system ['touch /tmp/pwned']",
    "name: x\nmodel: {}\nladder: {rungs: [null, {name: a}]}",  # AttributeError in LadderConfig.check before the fix
])
def test_regressions(text):
    assert check(text) is None


def test_an_override_below_a_value_is_a_usage_error():
    with pytest.raises(RecipeError, match=r"fuzz.yaml:\d+: model.dim.x: cannot set it: model.dim is not a mapping"):
        parse_recipe(BASE_TEXT, source="fuzz.yaml", overrides={"model.dim.x": 1})


def test_every_override_that_cannot_be_set_is_reported():  # only the first was, before the fix
    with pytest.raises(RecipeError) as info:
        parse_recipe(BASE_TEXT, source="fuzz.yaml", overrides={"model.dim.x": 1, "train.lr.y": 2, "name": None})
    assert [key for _, key, _ in info.value.problems] == ["model.dim.x", "train.lr.y", "name"]


def test_a_null_key_is_reported_with_its_line():
    with pytest.raises(RecipeError, match=r"fuzz.yaml:3: None: unknown key"):
        parse_recipe("name: x\nmodel: {}\nnull: 3\n", source="fuzz.yaml")
