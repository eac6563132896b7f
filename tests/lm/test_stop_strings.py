"""Stop strings: the scanner finds what a search of the whole text finds, whatever the pieces the text arrives in,
and a generated token costs the same whatever the length of the stop strings (the server accepts up to 4 × 1000
characters; before, held-back text was compared with every prefix of every stop string at every token)."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from fournil.lm.prompt import PromptTokenizer, StopScanner, StreamDecoder

TEXT = ("Le fournil sent le levain et la farine. The bakery smells of sourdough and flour. " * 12).strip()


def first_stop(text: str, stops: list[str]) -> int | None:
    """The reference: where the stop string that ends first begins (the longest of those ending together)."""
    hits = [(at + len(s), -len(s), at) for s in stops for at in range(len(text)) if text.startswith(s, at)]
    return min(hits)[2] if hits else None


def held_back(text: str, stops: list[str]) -> int:
    """The reference: the longest tail of `text` that is a proper prefix of a stop string."""
    return max((n for s in stops for n in range(1, min(len(s) - 1, len(text)) + 1) if text.endswith(s[:n])),
               default=0)


alphabet = st.sampled_from("aab")  # few letters: many partial matches, repeats and overlaps


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet, max_size=40), stops=st.lists(st.text(alphabet, min_size=1, max_size=8), max_size=4),
       cuts=st.lists(st.integers(0, 40), max_size=8))
def test_scanner_equals_a_search_of_the_whole_text(text, stops, cuts):
    scanner, start, found = StopScanner(stops), 0, None
    for cut in [*sorted(cuts), len(text)]:
        piece_end = max(start, min(cut, len(text)))
        found = scanner.feed(text[:piece_end], start)
        if found is not None:
            break
        assert scanner.held_back() == held_back(text[:piece_end], stops)
        start = piece_end
    assert found == first_stop(text, stops)


def stream_cost(tok: PromptTokenizer, ids: list[int], stops: tuple[str, ...]) -> float:
    """Seconds to stream `ids` through a StreamDecoder with `stops` (the best of 3 runs)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        decoder = StreamDecoder(tok, stops)
        for i in ids:
            decoder.push(i)
        best = min(best, time.perf_counter() - started)
        assert not decoder.stopped and decoder.flush() is not None
    return best


def test_token_cost_does_not_grow_with_stop_length(tiny_dir):
    """~250 tokens of text against 4 stop strings of 10 and of 100 000 characters that follow the text for a while
    and then differ (the worst case of the old prefix comparison): same cost within a generous factor."""
    tok = PromptTokenizer.load(tiny_dir)
    ids = tok.encode(TEXT, special=False)
    assert len(ids) > 200

    def stops(length: int) -> tuple[str, ...]:
        # each starts like a part of the text, then differs: held-back text really is compared with them
        match = min(30, length - 1)
        return tuple(TEXT[k:k + match] + "§" * (length - match) for k in (0, 7, 13, 41))

    short, long = stream_cost(tok, ids, stops(10)), stream_cost(tok, ids, stops(100_000))
    none = stream_cost(tok, ids, ())
    print(f"\n{len(ids)} tokens: no stop {none * 1e3:.1f} ms, 4 × 10 chars {short * 1e3:.1f} ms, "
          f"4 × 100 000 chars {long * 1e3:.1f} ms")
    assert long < 3 * short + 0.05, (short, long)
