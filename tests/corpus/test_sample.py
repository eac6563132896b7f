"""The embedded sample corpus keeps its promises: an honest manifest, licences shipped, FR/EN balanced,
test pairs held out of the monolingual streams, clean NFC text. Offline; reads the committed files only."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import unicodedata
from functools import cache

import pytest

from fournil.corpus import CATEGORIES, SAMPLE_DIR, iter_sample

FIELDS = {"fr": ("text",), "en": ("text",), "code": ("text",), "parallel": ("en", "fr")}
BAD_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # Cc minus \t and \n


@cache
def records(category: str) -> tuple[dict, ...]:
    return tuple(iter_sample(category))


@cache
def manifest() -> dict:
    return json.loads((SAMPLE_DIR / "MANIFEST.json").read_text(encoding="utf-8"))


def utf8(texts) -> int:
    return sum(len(t.encode()) for t in texts)


def leaked(needles: list[str], texts) -> set[str]:
    """The needles that occur in any of `texts`, in one pass instead of one scan per needle.

    Any occurrence of a needle at least 2*stride long covers a stride-aligned window of the joined text, and
    that window is one of the needle's own `stride` first windows: look those up, then confirm exactly.
    """
    hay = "\x00".join(texts)
    stride = max(1, min(len(n) for n in needles) // 2)
    windows: dict[str, set[str]] = {}
    for n in needles:
        for i in range(stride):
            windows.setdefault(n[i:i + stride], set()).add(n)
    found = set()
    for p in range(0, len(hay), stride):
        for n in windows.get(hay[p:p + stride], ()):
            if n in hay[max(0, p - stride):p + len(n)]:
                found.add(n)
    return found


def test_leaked_finds_substrings_anywhere():
    needles = ["the quick brown fox jumps", "over the lazy dog again"]
    texts = ["prefix xx the quick brown fox jumps!", "nothing", "over the lazy dog agai"]
    assert leaked(needles, texts) == {"the quick brown fox jumps"}
    for shift in range(30):
        assert leaked(needles, ["." * shift + needles[1]]) == {needles[1]}


def test_iter_sample_rejects_unknown_category():
    with pytest.raises(ValueError, match="fr, en, code, parallel"):
        next(iter_sample("de"))


@pytest.mark.parametrize("category", CATEGORIES)
def test_manifest_matches_file(category):
    name = f"{category}.jsonl.gz"
    entry = manifest()["files"][name]
    path = SAMPLE_DIR / name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    assert path.stat().st_size == entry["compressed_bytes"]
    recs = records(category)
    assert len(recs) == entry["records"] > 0
    if category == "parallel":
        assert entry["utf8_bytes"] == {lang: utf8(r[lang] for r in recs) for lang in ("en", "fr")}
        assert entry["splits"] == {"test": sum(r["split"] == "test" for r in recs),
                                   "train": sum(r["split"] == "train" for r in recs)}
    else:
        assert entry["utf8_bytes"] == utf8(r["text"] for r in recs)
    by_source = entry["by_source"]
    assert sum(s.get("docs", s.get("pairs", 0)) for s in by_source.values()) == len(recs)
    for src, stats in by_source.items():
        sub = [r for r in recs if r["source"] == src]
        assert len(sub) == stats.get("docs", stats.get("pairs"))


def test_manifest_covers_every_shipped_file():
    shipped = {str(p.relative_to(SAMPLE_DIR)) for p in SAMPLE_DIR.rglob("*") if p.is_file()}
    listed = set(manifest()["files"]) | set(manifest()["other_files"]) | {"MANIFEST.json"}
    assert shipped == listed
    for name, digest in manifest()["other_files"].items():
        assert hashlib.sha256((SAMPLE_DIR / name).read_bytes()).hexdigest() == digest, name


def test_manifest_totals_add_up():
    m = manifest()
    for category in ("fr", "en", "code"):
        counts = [s["counts"][category] for s in m["sources"].values() if category in s["counts"]]
        total = sum(c["utf8_bytes"] for c in counts)
        file_bytes = m["files"][f"{category}.jsonl.gz"]["utf8_bytes"]
        assert total == m["totals"][category]["utf8_bytes"] == file_bytes
    pairs = sum(s["counts"]["parallel"]["pairs"] for s in m["sources"].values() if "parallel" in s["counts"])
    assert pairs == m["totals"]["parallel"]["pairs"]


def test_gzip_is_deterministic():
    """mtime 0 and no file name in the header, so a rebuild can be byte-identical."""
    for category in CATEGORIES:
        header = (SAMPLE_DIR / f"{category}.jsonl.gz").read_bytes()[:10]
        assert header[:3] == b"\x1f\x8b\x08" and header[3] & 0x08 == 0, "file name stored in gzip header"
        assert header[4:8] == b"\0\0\0\0", "gzip mtime is not 0"


def test_every_source_is_licensed():
    sources = manifest()["sources"]
    used = {r["source"] for c in CATEGORIES for r in records(c)}
    assert used == set(sources)
    for name, src in sources.items():
        assert src["packages"] and all(src["packages"].values()), name
        assert src["copyright"], name
        assert src["copyright_files"], f"{name}: no Debian copyright file shipped"
        for f in src["copyright_files"]:
            assert "Copyright" in (SAMPLE_DIR / "LICENSES" / f).read_text(encoding="utf-8"), f
        spdx_ids = set(re.split(r"\s+(?:OR|AND|WITH)\s+", src["license"]))
        files = src["license_files"]
        for spdx in spdx_ids:
            base = spdx.removesuffix("-or-later").removesuffix("-only")
            assert f"{base}.txt" in files, f"{name}: no licence file for {spdx}"
        for f in files:
            assert (SAMPLE_DIR / "LICENSES" / f).is_file(), f"{name}: LICENSES/{f} is missing"
            text = (SAMPLE_DIR / "LICENSES" / f).read_text(encoding="utf-8")
            assert len(text) > 200, f"{f} looks truncated"


def test_licence_texts_are_the_real_ones():
    lic = SAMPLE_DIR / "LICENSES"
    expected = {"GPL-2.0.txt": "GNU GENERAL PUBLIC LICENSE\n                       Version 2, June 1991",
                "MPL-2.0.txt": "Mozilla Public License Version 2.0",
                "CC-BY-SA-3.0.txt": "Attribution-ShareAlike 3.0 Unported",
                "PSF-2.0.txt": "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2"}
    for name, heading in expected.items():
        assert heading in (lic / name).read_text(encoding="utf-8"), name


def test_fr_en_balance():
    fr, en = (utf8(r["text"] for r in records(c)) for c in ("fr", "en"))
    assert abs(fr - en) <= 0.10 * max(fr, en), (fr, en)
    assert fr > 1_000_000 and en > 1_000_000


def test_test_pairs_not_in_monolingual_docs():
    test = [r for r in records("parallel") if r["split"] == "test"]
    assert 400 <= len(test) <= 600
    for lang in ("en", "fr"):
        found = leaked([r[lang] for r in test], (r["text"] for r in records(lang)))
        assert not found, f"{len(found)} test {lang} texts appear in {lang}.jsonl.gz, e.g. {min(found)!r}"


def test_test_pairs_not_in_train_pairs():
    """Not even as part of a longer train segment: parallel train data may be used for training too."""
    test = [r for r in records("parallel") if r["split"] == "test"]
    for lang in ("en", "fr"):
        train = (r[lang] for r in records("parallel") if r["split"] == "train")
        found = leaked([r[lang] for r in test], train)
        assert not found, f"{len(found)} test {lang} texts appear in train pairs, e.g. {min(found)!r}"


def test_pairs_are_distinct_and_translated():
    pairs = records("parallel")
    assert all(r["split"] in ("train", "test") for r in pairs)
    assert not [r for r in pairs if r["en"] == r["fr"]]
    assert len({(r["en"], r["fr"]) for r in pairs}) == len(pairs), "duplicate pairs"


@pytest.mark.parametrize("category", CATEGORIES)
def test_text_is_clean_nfc(category):
    for r in records(category):
        for key in FIELDS[category]:
            text = r[key]
            assert text and text == text.strip(), r
            assert unicodedata.is_normalized("NFC", text), r
            assert not BAD_CONTROL.search(text), r


def test_documents_are_document_sized():
    """Monolingual streams group short strings into documents, not one record per UI label."""
    for category in ("fr", "en", "code"):
        sizes = sorted(len(r["text"]) for r in records(category))
        assert sizes[len(sizes) // 2] >= 300, category


def test_files_are_real_gzip_jsonl():
    for category in CATEGORIES:
        with gzip.open(SAMPLE_DIR / f"{category}.jsonl.gz", "rt", encoding="utf-8") as f:
            first = json.loads(f.readline())
        assert set(first) >= {*FIELDS[category], "source"}
