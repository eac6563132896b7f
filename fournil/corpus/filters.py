"""The corpus stage's own datatrove filters: clean-up, language routing, French-aware quality, decontamination.

Each is a `BaseFilter`, so datatrove counts drops per reason and writes rejected documents with their reason.
`QualityFilter` splits a document into words once and evaluates the Gopher quality, Gopher repetition, C4 and
FineWeb rules on that one list — the stock datatrove filters each re-tokenise with spaCy (see
DATATROVE-OFFLINE.md: 0.06 MB/s/core for the stock chain on French).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from datatrove.data import Document
from datatrove.pipeline.filters.base_filter import BaseFilter

from fournil.corpus.config import CorpusConfig
from fournil.corpus.langid import code_score, detect_language
from fournil.corpus.text import STOP_WORDS, normalize, scrub_pii, strip_boilerplate, words

BULLETS = ("•", "-", "–", "—", "*", "·", "‣", "▪", "◦", "→")
LINE_END_PUNCT = (".", "!", "?", "»", "…", ":", '"', "”", ";")  # French lines often end in » or … or :
_LOREM = re.compile(r"lorem ipsum", re.IGNORECASE)
_NO_LETTER = re.compile(r"[\d_'’-]+")  # a word token with no letter: numbers, mostly


class ConfigFilter(BaseFilter):
    """A datatrove filter that reads the corpus config."""

    def __init__(self, config: CorpusConfig, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.config = config


class CleanText(ConfigFilter):
    """NFC, whitespace/control clean-up, boilerplate lines, PII placeholders; drops what is left empty."""

    name = "🧽 fournil clean"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        doc.metadata["raw_bytes"] = len(doc.text.encode("utf-8", "replace"))
        text = normalize(doc.text)
        if self.config.remove_boilerplate and doc.metadata.get("category") in ("fr", "en"):
            text, removed = strip_boilerplate(text)
            if removed:
                self.stat_update("boilerplate_lines", value=removed)
        if self.config.scrub_pii and doc.metadata.get("category") != "code":
            text, counts = scrub_pii(text)
            for kind, n in counts.items():
                self.stat_update(f"pii_{kind}", value=n)
        doc.text = text
        return (True, "") if text.strip() else (False, "empty")


class LanguageRouter(ConfigFilter):
    """Detect the language (and code); a document that contradicts its source's category is rejected."""

    name = "🌍 fournil language"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        category = doc.metadata.get("category")
        if category == "parallel":  # both languages by construction; pairs are too short for a fair lid check
            doc.metadata["lang"] = "fr+en"
            return True
        is_code = code_score(doc.text) >= self.config.min_code_score
        lang, score = detect_language(doc.text)
        doc.metadata["lang"] = "code" if is_code else lang
        doc.metadata["lang_score"] = round(score, 3)
        if category == "code":
            return (True, "") if is_code else (False, f"not_code_{lang}")
        if is_code:
            return False, "is_code"
        if lang != category:
            return False, f"lang_{lang}_in_{category}"
        if score < self.config.min_lang_score:
            return False, "lang_unsure"
        return True


class QualityFilter(ConfigFilter):
    """Gopher quality + repetition, C4 and FineWeb rules for French and English prose, from one word split."""

    name = "🥖 fournil quality"

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if doc.metadata.get("category") not in ("fr", "en"):
            return True
        reason = quality_reason(doc.text, doc.metadata["category"], self.config)
        return (False, reason) if reason else True


def quality_reason(text: str, lang: str, c: CorpusConfig) -> str | None:
    """The first rule `text` fails, or None. Rules are cheapest first, so most drops cost little."""
    tokens = words(text)
    word_list = [t for t in tokens if t[0].isalnum() or t[0] == "_"]  # punctuation tokens are not words
    n = len(word_list)
    if n < c.min_words:
        return "gopher_short"
    if n > c.max_words:
        return "gopher_long"
    mean = sum(map(len, word_list)) / n
    if not c.min_avg_word_length <= mean <= c.max_avg_word_length:
        return "gopher_word_length"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / n > c.max_symbol_word_ratio:
        return "gopher_symbols"
    lines = text.split("\n")
    lines_ne = [line for line in lines if line.strip()]
    n_lines = len(lines_ne) or 1
    if sum(line.startswith(BULLETS) for line in lines_ne) / n_lines > c.max_bullet_lines_ratio:
        return "gopher_bullets"
    if sum(line.endswith(("...", "…")) for line in lines_ne) / n_lines > c.max_ellipsis_lines_ratio:
        return "gopher_ellipsis"
    if 1 - sum(1 for w in word_list if _NO_LETTER.fullmatch(w)) / n < c.min_alpha_words_ratio:
        return "gopher_alpha"
    stops = STOP_WORDS.get(lang, frozenset())
    lowered = [w.lower() for w in word_list]
    if sum(1 for w in lowered if w in stops) < c.min_stop_words:
        return "gopher_stop_words"
    if c.drop_lorem_ipsum and _LOREM.search(text):
        return "c4_lorem_ipsum"
    if sum(line.endswith(LINE_END_PUNCT) for line in lines_ne) / n_lines < c.min_line_punct_ratio:
        return "fineweb_line_punct"
    if sum(len(line) <= 30 for line in lines_ne) / n_lines > c.max_short_line_ratio:
        return "fineweb_short_lines"
    if text.count("\n") / n > c.max_newline_word_ratio:
        return "fineweb_newlines"
    reason = _repetition_reason(text, lines_ne, lowered, c)
    return reason


def _repetition_reason(text: str, lines: list[str], lowered: list[str], c: CorpusConfig) -> str | None:
    """Gopher's repetition rules (Rae et al. 2021, table A1) on the shared word list."""
    counts = Counter(lines)
    dup_lines = sum(v for v in counts.values() if v > 1) - sum(1 for v in counts.values() if v > 1)
    if dup_lines / len(lines) > c.max_dup_line_ratio:
        return "gopher_dup_lines"
    dup_chars = sum(len(line) * (v - 1) for line, v in counts.items() if v > 1)
    if dup_chars / max(1, len(text)) > c.max_dup_line_char_ratio:
        return "gopher_dup_line_chars"
    total_chars = sum(map(len, lowered)) or 1
    for n, limit in ((2, c.max_top_2gram_ratio), (3, c.max_top_3gram_ratio), (4, c.max_top_4gram_ratio)):
        grams = Counter(zip(*(lowered[i:] for i in range(n)), strict=False))
        if not grams:
            break
        top, freq = grams.most_common(1)[0]
        if freq > 1 and sum(map(len, top)) * freq / total_chars > limit:
            return f"gopher_top_{n}gram"
    dup5 = _dup_ngram_chars(lowered, 5) / total_chars
    if dup5 > c.max_dup_5gram_ratio:
        return "gopher_dup_5gram"
    # words inside a repeated 10-gram are inside repeated 5-grams: dup10 ≤ dup5, often no need to count
    if dup5 > c.max_dup_10gram_ratio and _dup_ngram_chars(lowered, 10) / total_chars > c.max_dup_10gram_ratio:
        return "gopher_dup_10gram"
    return None


def _dup_ngram_chars(lowered: list[str], n: int) -> int:
    """Characters of the words covered by an n-gram seen earlier in the document."""
    seen: set[tuple[str, ...]] = set()
    covered = bytearray(len(lowered))
    ones = b"\1" * n
    for i, gram in enumerate(zip(*(lowered[k:] for k in range(n)), strict=False)):
        if gram in seen:
            covered[i:i + n] = ones
        else:
            seen.add(gram)
    return sum(len(w) for w, flag in zip(lowered, covered, strict=True) if flag)


_WORD = re.compile(r"\w+")


def eval_ngrams(eval_sets: dict[str, str], n: int) -> tuple[dict[int, str], dict[str, int]]:
    """Hashes of every word n-gram in each benchmark's texts → benchmark name; and texts read per benchmark.

    A benchmark is a file or folder: .jsonl (every string value is a text) or plain text (one text per line).
    """
    grams: dict[int, str] = {}
    texts_read: dict[str, int] = {}
    for name, spec in sorted(eval_sets.items()):
        path = Path(spec)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        count = 0
        for file in files:
            for line in file.read_text(encoding="utf-8", errors="replace").splitlines():
                texts = [line]
                if file.suffix == ".jsonl" and line.strip():
                    try:
                        record = json.loads(line)
                        texts = [v for v in record.values() if isinstance(v, str)] if isinstance(record, dict) else []
                    except ValueError:
                        pass
                for text in texts:
                    toks = _WORD.findall(text.lower())
                    count += 1
                    for i in range(len(toks) - n + 1):
                        grams.setdefault(hash(" ".join(toks[i:i + n])), name)
        texts_read[name] = count
    return grams, texts_read


class Decontaminate(ConfigFilter):
    """Drop documents sharing a word n-gram with an evaluation text; the reason names the benchmark."""

    name = "🧪 fournil decontaminate"
    _grams: dict[int, str] | None = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._grams is None:  # built in the worker: a str hash differs between processes
            self._grams = eval_ngrams(self.config.eval_sets, self.config.decontam_ngrams)[0]
        if not self._grams:
            return True
        n = self.config.decontam_ngrams
        toks = _WORD.findall(doc.text.lower())
        for i in range(len(toks) - n + 1):
            hit = self._grams.get(hash(" ".join(toks[i:i + n])))
            if hit:
                return False, f"decontam_{hit}"
        return True
