"""Every quality rule on text it must keep and text it must drop, in French and in English; language routing;
decontamination. The filters run as real datatrove steps where the reason bookkeeping matters."""

from __future__ import annotations

import dataclasses

import pytest
from corpus_fixtures import CODE_GOOD, EN_GOOD, FR_GOOD, write_jsonl
from datatrove.data import Document

from fournil.corpus.config import CorpusConfig
from fournil.corpus.filters import CleanText, Decontaminate, LanguageRouter, QualityFilter, quality_reason
from fournil.corpus.text import normalize, scrub_pii

C = CorpusConfig()
GOOD = {"fr": FR_GOOD, "en": EN_GOOD}


@pytest.mark.parametrize("lang", ["fr", "en"])
def test_good_prose_is_kept(lang):
    assert quality_reason(GOOD[lang], lang, C) is None


def _lines(lang: str, n: int, prefix: str = "", suffix: str = "") -> str:
    sentences = [s.strip() for s in GOOD[lang].replace("\n", " ").split(". ") if s.strip()]
    return "\n".join(f"{prefix}{sentences[i % len(sentences)]} {i}{suffix}" for i in range(n))


BAD = {
    "gopher_short": lambda lang: GOOD[lang][:120],
    "gopher_word_length": lambda lang: " ".join(["anticonstitutionnellement"] * 50 + ["et", "le", "the", "of"] * 5) + ".",
    "gopher_symbols": lambda lang: GOOD[lang] + " #" * 30,
    "gopher_bullets": lambda lang: _lines(lang, 12, prefix="– ", suffix="."),
    "gopher_ellipsis": lambda lang: _lines(lang, 12, suffix="…"),
    "gopher_alpha": lambda lang: GOOD[lang] + " " + " ".join(str(i) for i in range(60)),
    "gopher_stop_words": lambda lang: " ".join(["Montagne", "rivière", "forêt", "soleil", "nuage"] * 20) + ".",
    "c4_lorem_ipsum": lambda lang: GOOD[lang] + " Lorem ipsum dolor sit amet.",
    "fineweb_line_punct": lambda lang: "\n".join(GOOD[lang].replace(".", "").replace("»", "").split(" ", 80)[:80]),
    "gopher_dup_lines": lambda lang: GOOD[lang] + ("\nLa même ligne revient encore et encore ici." * 12),
    "gopher_top_2gram": lambda lang: GOOD[lang] + " " + "pain chaud " * 60 + ".",
    "gopher_dup_10gram": lambda lang: (GOOD[lang] + " ") * 3,
}


@pytest.mark.parametrize("lang", ["fr", "en"])
@pytest.mark.parametrize("reason", sorted(BAD))
def test_bad_text_is_dropped_with_its_reason(reason, lang):
    text = normalize(BAD[reason](lang))
    got = quality_reason(text, lang, C)
    if reason == "gopher_dup_10gram":  # the same paragraph three times trips the duplicate n-gram family
        assert got is not None and got.startswith(("gopher_dup", "gopher_top")), got
    elif reason == "gopher_dup_lines":
        assert got is not None and got.startswith("gopher_dup"), got
    else:
        assert got == reason


def test_thresholds_come_from_the_config():
    text = _lines("fr", 12, prefix="– ", suffix=".")
    assert quality_reason(text, "fr", C) == "gopher_bullets"
    assert quality_reason(text, "fr", dataclasses.replace(C, max_bullet_lines_ratio=1.0)) != "gopher_bullets"


def test_french_text_with_phone_numbers_survives_after_pii_scrubbing():
    """The stock Gopher alpha rule drops this (digits count as words); PII placeholders come first here."""
    text = FR_GOOD + " Appelez le 06 12 34 56 78, le 04 72 77 69 69 ou le +33 1 23 45 67 89, serveur 192.168.1.10."
    scrubbed, counts = scrub_pii(normalize(text))
    assert counts == {"phone": 3, "ipv4": 1}
    assert quality_reason(scrubbed, "fr", C) is None


def test_french_stop_words_are_french():
    """A French text is not dropped for lacking English stop words (the stock Gopher filter's failure)."""
    assert quality_reason(FR_GOOD, "fr", C) is None
    assert quality_reason(FR_GOOD, "en", C) == "gopher_stop_words"


def run_filter(step, docs):
    kept = list(step.run(iter(docs)))
    return kept, {k: v.total for k, v in step.stats.stats.items()}


def doc(text: str, category: str, i: int = 0) -> Document:
    return Document(text=text, id=f"t/{i}", metadata={"category": category, "source": "t"})


def test_language_router_reasons():
    docs = [doc(FR_GOOD, "fr", 0), doc(EN_GOOD, "en", 1), doc(FR_GOOD, "en", 2), doc(EN_GOOD, "fr", 3),
            doc(CODE_GOOD, "fr", 4), doc(CODE_GOOD, "code", 5), doc(FR_GOOD, "code", 6),
            doc("[en] Open\n[fr] Ouvrir", "parallel", 7)]
    kept, stats = run_filter(LanguageRouter(C), docs)
    assert [d.id for d in kept] == ["t/0", "t/1", "t/5", "t/7"]
    assert stats["dropped_lang_fr_in_en"] == 1
    assert stats["dropped_lang_en_in_fr"] == 1
    assert stats["dropped_is_code"] == 1
    assert stats["dropped_not_code_fr"] == 1
    assert kept[0].metadata["lang"] == "fr" and kept[0].metadata["lang_score"] > 0.8


def test_clean_then_quality_as_datatrove_steps():
    docs = [doc("\x00" + FR_GOOD + "\nCe site utilise des cookies.", "fr", 0), doc(" \x07 \n", "en", 1),
            doc(EN_GOOD[:100], "en", 2)]
    kept, stats = run_filter(CleanText(C), docs)
    assert [d.id for d in kept] == ["t/0", "t/2"] and stats["dropped_empty"] == 1
    assert "\x00" not in kept[0].text and "cookies" not in kept[0].text
    kept, stats = run_filter(QualityFilter(C), kept)
    assert [d.id for d in kept] == ["t/0"] and stats["dropped_gopher_short"] == 1


def test_decontamination_names_the_benchmark(tmp_path):
    needle = " ".join(FR_GOOD.split()[10:30])
    write_jsonl(tmp_path / "fb.jsonl", [{"question": needle}])
    (tmp_path / "wmt.txt").write_text(" ".join(EN_GOOD.split()[5:25]) + "\n", encoding="utf-8")
    config = dataclasses.replace(C, eval_sets={"frenchbench": str(tmp_path / "fb.jsonl"),
                                               "wmt": str(tmp_path / "wmt.txt")})
    clean = "Un tout autre texte, sans rapport avec les évaluations, " * 5
    kept, stats = run_filter(Decontaminate(config), [doc(FR_GOOD, "fr", 0), doc(EN_GOOD, "en", 1),
                                                     doc(clean, "fr", 2)])
    assert [d.id for d in kept] == ["t/2"]
    assert stats["dropped_decontam_frenchbench"] == 1 and stats["dropped_decontam_wmt"] == 1
