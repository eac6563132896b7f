"""Paths and helpers shared by the tokenizer tests (a uniquely named module: `conftest` is taken by tests/)."""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).parent / "data"  # fr.txt, en.txt, code.txt: written for these tests
TEXT_SPECS = [f"fr={DATA / 'fr.txt'}", f"en={DATA / 'en.txt'}", f"code={DATA / 'code.txt'}"]
VOCAB = 800


def fixture_config(**overrides):
    from fournil.tokenizer.config import TokenizerConfig

    return TokenizerConfig(vocab_size=VOCAB, weights={"fr": 1.0, "en": 1.0, "code": 0.2}, **overrides)


def corpus_lines() -> list[str]:
    """Every non-empty line of the fixtures: the equality corpus."""
    return [line for name in ("fr.txt", "en.txt", "code.txt")
            for line in (DATA / name).read_text(encoding="utf-8").splitlines() if line.strip()]
