"""Mixing: target shares within 1 %, the repeat cap, source weights, determinism."""

from __future__ import annotations

import random

import pytest

from fournil.corpus.config import CorpusConfig, croissant_mix
from fournil.corpus.mix import format_plan, plan_mix, repeats


def corpus(seed: int = 0) -> dict[str, tuple[str, list[int]]]:
    """Sources of very different sizes (documents of random token counts), as a real corpus has."""
    rng = random.Random(seed)
    spec = {"fr-wiki": ("fr", 900), "fr-books": ("fr", 300), "en-web": ("en", 4000), "code": ("code", 700),
            "pairs": ("parallel", 2000)}
    return {name: (cat, [rng.randint(20, 2000) for _ in range(n)]) for name, (cat, n) in spec.items()}


def realised(sources, plan, seed=0):
    mixed: dict[str, int] = {}
    for name, (cat, sizes) in sources.items():
        copies = repeats([f"{name}/{i}" for i in range(len(sizes))], sizes, plan["sources"][name]["factor"], seed)
        mixed[cat] = mixed.get(cat, 0) + sum(n * s for n, s in zip(copies, sizes, strict=True))
    total = sum(mixed.values())
    return {c: v / total for c, v in mixed.items()}


@pytest.mark.parametrize("mix", [croissant_mix(), {"fr": 0.5, "en": 0.5, "code": 0.0, "parallel": 0.0},
                                 {"fr": 0.3, "en": 0.3, "code": 0.3, "parallel": 0.1}])
def test_realised_shares_within_one_percent(mix):
    sources = corpus()
    tokens = {n: sum(s) for n, (_, s) in sources.items()}
    plan = plan_mix(tokens, {n: c for n, (c, _) in sources.items()}, {n: 1.0 for n in sources}, mix, max_epochs=10)
    norm = sum(mix.values())
    shares = realised(sources, plan)
    for cat, target in mix.items():
        assert abs(shares.get(cat, 0.0) - target / norm) < 0.01, (cat, shares, mix)


def test_french_is_upsampled_to_english_and_capped():
    tokens = {"fr": 100, "en": 1000}
    cats = {"fr": "fr", "en": "en"}
    plan = plan_mix(tokens, cats, {"fr": 1.0, "en": 1.0}, {"fr": 0.5, "en": 0.5}, max_epochs=4)
    assert plan["sources"]["fr"]["factor"] == pytest.approx(4.0)  # capped: 1:1 would need ×10
    assert plan["sources"]["en"]["factor"] == pytest.approx(0.4)  # so English is subsampled to keep 1:1
    assert plan["categories"]["fr"]["share"] == pytest.approx(0.5)
    uncapped = plan_mix(tokens, cats, {"fr": 1.0, "en": 1.0}, {"fr": 0.5, "en": 0.5}, max_epochs=20)
    assert uncapped["sources"]["fr"]["factor"] == pytest.approx(10.0)
    assert uncapped["sources"]["en"]["factor"] == pytest.approx(1.0)


def test_source_weight_shifts_share_inside_its_category():
    tokens = {"a": 1000, "b": 1000, "en": 2000}
    cats = {"a": "fr", "b": "fr", "en": "en"}
    plan = plan_mix(tokens, cats, {"a": 3.0, "b": 1.0, "en": 1.0}, {"fr": 0.5, "en": 0.5}, max_epochs=4)
    assert plan["sources"]["a"]["mixed_tokens"] == pytest.approx(3 * plan["sources"]["b"]["mixed_tokens"], rel=1e-6)
    assert plan["categories"]["fr"]["share"] == pytest.approx(0.5)


def test_categories_with_zero_share_are_reported_dropped():
    plan = plan_mix({"a": 10, "c": 10}, {"a": "fr", "c": "code"}, {"a": 1.0, "c": 1.0}, {"fr": 1.0}, 4)
    assert plan["dropped_categories"] == ["code"] and plan["sources"]["c"]["factor"] == 0.0
    assert any("not in the mix" in line for line in format_plan(plan))


def test_repeats_deterministic_and_seeded():
    ids, sizes = [f"d{i}" for i in range(500)], [100] * 500
    a, b, c = repeats(ids, sizes, 2.3, seed=1), repeats(ids, sizes, 2.3, seed=1), repeats(ids, sizes, 2.3, seed=2)
    assert a == b and a != c
    assert sum(a) == 1150 and set(a) == {2, 3}


def test_default_mix_is_croissant_1_to_1():
    mix = CorpusConfig().mix
    assert mix["fr"] == mix["en"] and abs(sum(mix.values()) - 1) < 1e-3 and mix["code"] > mix["parallel"]
