"""Mixing to target category shares with upsampling and a cap on repeats, from measured per-source sizes.

The plan: every category c has a target share w_c of the mix, every source s of c a weight v_s that scales its
natural share inside c. With T_s the source's tokens and W_c = Σ v_s·T_s, the mix has M tokens and source s is
repeated f_s = w_c·M·v_s / W_c times (a fraction means a deterministic subset of its documents). M is as large
as possible without dropping data from the most abundant category, but no source may exceed `max_epochs`:
    M = min( max_c W_c / w_c ,  min_s max_epochs · W_c / (w_c · v_s) ).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence


def plan_mix(tokens: dict[str, int], categories: dict[str, str], weights: dict[str, float],
             mix: dict[str, float], max_epochs: float) -> dict:
    """Repeat factor per source and the resulting share per category. `tokens`/`categories`/`weights` by source."""
    present = {c for s, c in categories.items() if tokens.get(s, 0) > 0}
    shares = {c: mix.get(c, 0.0) for c in present if mix.get(c, 0.0) > 0}
    norm = sum(shares.values())
    if not norm:
        return {"total_tokens": 0, "sources": {}, "categories": {}, "dropped_categories": sorted(present)}
    shares = {c: w / norm for c, w in shares.items()}
    weighted = {c: sum(weights[s] * tokens[s] for s in tokens if categories[s] == c) for c in shares}
    total = max(weighted[c] / shares[c] for c in shares)
    for s, c in categories.items():
        if c in shares and tokens.get(s, 0) > 0:
            total = min(total, max_epochs * weighted[c] / (shares[c] * weights[s]))
    sources = {}
    for s, c in sorted(categories.items()):
        factor = shares[c] * total * weights[s] / weighted[c] if c in shares and tokens.get(s, 0) > 0 else 0.0
        sources[s] = {"category": c, "tokens": tokens.get(s, 0), "factor": factor,
                      "mixed_tokens": round(factor * tokens.get(s, 0))}
    mixed = sum(v["mixed_tokens"] for v in sources.values()) or 1
    cats = {c: {"target": shares.get(c, 0.0),
                "tokens": sum(v["tokens"] for v in sources.values() if v["category"] == c),
                "mixed_tokens": sum(v["mixed_tokens"] for v in sources.values() if v["category"] == c)}
            for c in sorted(set(categories.values()))}
    for v in cats.values():
        v["share"] = v["mixed_tokens"] / mixed
    return {"total_tokens": mixed, "max_epochs": max_epochs, "sources": sources, "categories": cats,
            "dropped_categories": sorted(present - set(shares))}


def doc_rank(seed: int, doc_id: str) -> int:
    """A document's seeded rank: blake2b-64 of seed and id, big-endian, so int order is the digest's byte order
    (and a rank fits the uint64 arrays `pack` keeps per document instead of the ids)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{doc_id}".encode(), digest_size=8).digest(), "big")


def repeats(doc_ids: Sequence[str], sizes: Sequence[int], factor: float, seed: int) -> list[int]:
    """How many copies of each document: ⌊factor⌋ each, plus one for a seeded subset holding the fractional part.

    The subset is filled in a seeded order until it holds frac·Σsizes tokens, so the mixed size is within one
    document of the target — what lets the mix hit its shares within 1 %.
    """
    return repeat_counts([doc_rank(seed, d) for d in doc_ids], sizes, factor)


def repeat_counts(ranks: Sequence[int], sizes: Sequence[int], factor: float) -> list[int]:
    """`repeats` from precomputed `doc_rank`s (ties keep document order)."""
    whole, frac = math.floor(factor), factor - math.floor(factor)
    counts = [whole] * len(ranks)
    if frac <= 0:
        return counts
    goal = frac * sum(sizes)
    order = sorted(range(len(ranks)), key=ranks.__getitem__)
    taken = 0
    for i in order:
        if taken >= goal:
            break
        if taken + sizes[i] / 2 > goal:  # would overshoot by more than half of it: skip
            continue
        counts[i] += 1
        taken += sizes[i]
    return counts


def format_plan(plan: dict) -> list[str]:
    """The plan as aligned text lines, printed before any mixed output is written."""
    unit = plan.get("unit", "tokens")
    lines = [f"{'source':<24} {'category':<9} {unit:>14} {'× repeat':>9} {'mixed':>14}"]
    for name, s in plan["sources"].items():
        lines.append(f"{name:<24} {s['category']:<9} {s['tokens']:>14,} {s['factor']:>9.3f} {s['mixed_tokens']:>14,}")
    lines.append(f"{'category':<24} {'target':>9} {'share':>9}")
    for name, c in plan["categories"].items():
        lines.append(f"{name:<24} {c['target']:>9.1%} {c['share']:>9.1%}")
    if plan["dropped_categories"]:
        lines.append(f"not in the mix (share 0): {', '.join(plan['dropped_categories'])}")
    return lines
