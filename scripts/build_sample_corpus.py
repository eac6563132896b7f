#!/usr/bin/env python3
"""Build fournil's embedded FR/EN sample corpus from Debian bookworm packages.

The demo (`fournil bake`) must run offline, so a small, licensed, balanced sample ships inside the package.
This script is how that sample was made: it fetches Debian packages with `apt-get download` into a cache
outside the repo, unpacks them with `dpkg-deb -x`, extracts aligned EN-FR pairs (gettext catalogs, help pages
aligned by id or by structure) plus monolingual and code extras, and writes `fournil/corpus/sample/`.
Same packages in, byte-identical files out: inputs are sorted, seeds fixed, gzip mtime is 0.
See /work/shared/DATA-SOURCES.md for what exists and why these sources were chosen.

    python scripts/build_sample_corpus.py [--cache DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import bisect
import gettext
import gzip
import hashlib
import html
import itertools
import json
import logging
import random
import re
import shutil
import subprocess
import unicodedata
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

log = logging.getLogger("build_sample_corpus")

SCRIPT_VERSION = "1.0"
SEED = 20241125
REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "fournil" / "corpus" / "sample"
DEFAULT_CACHE = Path("/tmp/fournil-sample-cache")

MONO_TARGET_BYTES = 5_000_000  # per language; DATA-SOURCES.md suggests 4-6 MB each for the demo
KJV_SHARE = 0.09  # archaic English: keep the KJV under 10 % of the English stream
CODE_TARGET_BYTES = 1_000_000
N_TEST_PAIRS = 500
LIBREOFFICE_MAX_PAIRS = 26_000  # whole help pages, seeded; keeps the committed sample well under 8 MB gzipped
DOC_MAX_CHARS = 3000  # short strings are grouped into documents of a few hundred to a few thousand chars
DOC_MIN_CHARS = 400

WESNOTH_CAMPAIGNS = ("did", "dm", "dw", "ei", "httt", "l", "low", "nr",
                     "sof", "sota", "sotbe", "thot", "trow", "tsg", "ttb", "utbs")


@dataclass(frozen=True)
class Source:
    """One corpus source: where it comes from and under which terms it may be redistributed."""

    packages: tuple[str, ...]
    license: str  # SPDX expression
    license_files: tuple[str, ...]  # files under LICENSES/
    copyright: str
    upstream: str
    domain: str


SOURCES: dict[str, Source] = {
    "wesnoth": Source(
        ("wesnoth-1.16-data", *(f"wesnoth-1.16-{c}" for c in WESNOTH_CAMPAIGNS)),
        "GPL-2.0-or-later", ("GPL-2.0.txt",),
        "David White and the Battle for Wesnoth project contributors and translators",
        "https://www.wesnoth.org/", "fantasy narrative and game dialogue"),
    "freeciv": Source(
        ("freeciv-data",), "GPL-2.0-or-later", ("GPL-2.0.txt",),
        "The Freeciv project", "https://www.freeciv.org/", "nation histories (encyclopedic) and game help"),
    "libreoffice-help": Source(
        ("libreoffice-help-en-us", "libreoffice-help-fr"), "MPL-2.0", ("MPL-2.0.txt",),
        "The Document Foundation and LibreOffice contributors", "https://help.libreoffice.org/",
        "office software documentation"),
    "debian-handbook": Source(
        ("debian-handbook",), "GPL-2.0-or-later OR CC-BY-SA-3.0", ("GPL-2.0.txt", "CC-BY-SA-3.0.txt"),
        "Raphaël Hertzog, Roland Mas and translators", "https://debian-handbook.info/",
        "system administration book"),
    "gnome-user-docs": Source(
        ("gnome-user-docs",), "CC-BY-SA-3.0", ("CC-BY-SA-3.0.txt",),
        "Shaun McCance, the GNOME Documentation Project and translators", "https://help.gnome.org/",
        "desktop user help"),
    "dasher": Source(
        ("dasher-data",), "GPL-2.0-or-later", ("GPL-2.0.txt",),
        "The Dasher Project (training texts; original provenance undocumented)",
        "https://www.inference.org.uk/dasher/", "general prose: forum/news French, mixed English"),
    "devils-dictionary": Source(
        ("dict-devil",), "LicenseRef-Public-Domain", ("LicenseRef-Public-Domain.txt",),
        "Ambrose Bierce (1911 edition, copyright expired); Internet Wiretap edition",
        "https://tracker.debian.org/dict-devil",
        "satirical dictionary (19th-century American English)"),
    "kjv": Source(
        ("bible-kjv", "bible-kjv-text"), "LicenseRef-Public-Domain", ("LicenseRef-Public-Domain.txt",),
        "King James Version (1611, copyright expired); Bible Retrieval System by Chip Chapin",
        "https://tracker.debian.org/bible-kjv", "religious text, archaic English (slice)"),
    "python-stdlib": Source(
        ("libpython3.11-stdlib", "libpython3.11-minimal"), "PSF-2.0", ("PSF-2.0.txt",),
        "Python Software Foundation", "https://www.python.org/", "Python source code"),
}

# Where each licence text is copied from (Debian ships them; see each package's copyright file).
LICENSE_TEXTS: dict[str, tuple[str, str]] = {
    "GPL-2.0.txt": ("/usr/share/common-licenses/GPL-2", ""),
    "MPL-2.0.txt": ("/usr/share/common-licenses/MPL-2.0", ""),
    "CC-BY-SA-3.0.txt": ("gnome-user-docs", "CC-BY-SA-3.0"),  # a `License:` paragraph in its copyright file
    "PSF-2.0.txt": ("libpython3.11-minimal", "PSF-2.0"),  # -stdlib links its doc dir here
}
PUBLIC_DOMAIN_NOTE = """\
LicenseRef-Public-Domain

The King James Version of the Bible (1611) and Ambrose Bierce's The Devil's Dictionary (1911 edition) are in
the public domain: their copyright has expired. Debian packages them as bible-kjv-text and dict-devil; the
packaging notes are reproduced in copyright/bible-kjv.copyright (identical for bible-kjv-text) and
copyright/dict-devil.copyright.
"""


# ---------------------------------------------------------------- fetching


def fetch(packages: Iterable[str], cache: Path) -> dict[str, tuple[str, Path]]:
    """Download (one apt-get call) and unpack each package once; return {package: (version, root)}."""
    debs, roots = cache / "debs", cache / "root"
    debs.mkdir(parents=True, exist_ok=True)
    roots.mkdir(parents=True, exist_ok=True)
    wanted = {}
    for pkg in sorted(set(packages)):
        show = subprocess.run(["apt-cache", "show", "--no-all-versions", pkg],
                              check=True, capture_output=True, text=True).stdout
        fields = dict(re.findall(r"^(Version|Architecture): (.+)$", show, re.M))
        version = fields["Version"]
        deb = debs / f"{pkg}_{version.replace(':', '%3a')}_{fields['Architecture']}.deb"  # apt-get's naming
        wanted[pkg] = (version, deb)
    missing = [f"{pkg}={version}" for pkg, (version, deb) in wanted.items() if not deb.exists()]
    if missing:
        log.info("downloading %d packages into %s", len(missing), debs)
        subprocess.run(["apt-get", "download", "-q", *missing], cwd=debs, check=True, capture_output=True)
    out = {}
    for pkg, (version, deb) in wanted.items():
        root = roots / deb.name.removesuffix(".deb")
        if not (root / ".complete").exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
            (root / ".complete").touch()
        out[pkg] = (version, root)
    return out


# ---------------------------------------------------------------- text cleaning

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x84\x86-\x9f]")
_INVISIBLE = re.compile("[\u00ad\u200b\ufeff]")  # soft hyphen, zero-width space, BOM
_TAG = re.compile(r"<[^<>]*>")
_WESNOTH_VAR = re.compile(r"\$[A-Za-z_{]")
_PRINTF = re.compile(r"%(\d+\$)?[-+ #0]*\d*(\.\d+)?(l|ll|h)?[sdiufxXcegp]")
_FREECIV_QUALIFIER = re.compile(r"^\?[\w .-]+:")
_LEFTOVER_MARKUP = re.compile(r"[{}]|&\w+;|\[/?\w+[^\]]*\]|\w+\.(png|jpg|webp)\b")
_MNEMONIC = re.compile(r"(?<=\w)_(?=\w)|(?<![\w_])_(?=\w)")  # GTK access keys: "Sauv_egarder", "_Quit"
_IDENTIFIER = re.compile(r"[A-Z][a-z]+(?:[A-Z][a-z]*)+|\w+_\w+")  # flag names such as "NoCities"


def normalize(text: str, *, one_line: bool = False) -> str:
    """NFC, Unix newlines, no control characters but \\n and \\t: the contract the tests check."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u0085", "\n").replace("\u2028", "\n")
    text = _CONTROL.sub("", text)
    text = _INVISIBLE.sub("", text)
    if one_line:
        return " ".join(text.split())
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n")).strip()


def clean_catalog_string(s: str) -> str | None:
    """Strip markup from a Wesnoth/Freeciv string; None when placeholders would leave a broken sentence.

    Placeholders ($unit.name, %s) cannot be filled consistently, so such strings are dropped on both sides.
    """
    s = _FREECIV_QUALIFIER.sub("", s)
    s = html.unescape(_TAG.sub("", s))
    if _WESNOTH_VAR.search(s) or _PRINTF.search(s) or _LEFTOVER_MARKUP.search(s) or _IDENTIFIER.fullmatch(s):
        return None
    if s.count("_") == 1:
        s = _MNEMONIC.sub("", s)
    s = normalize(s)
    return s or None


_EN_WORDS = frozenset([
    "the", "and", "of", "to", "is", "are", "this", "that", "with", "for", "you", "your", "it", "be",
    "by", "from", "can", "will", "not", "which", "if", "when", "these", "there", "have", "has", "was",
    "were", "been", "into", "its", "than", "then", "they", "their", "would", "should",
])
_FR_WORDS = frozenset([
    "le", "la", "les", "des", "du", "et", "est", "sont", "une", "pour", "dans", "sur", "avec", "vous",
    "votre", "cette", "qui", "que", "pas", "ne", "au", "aux", "par", "il", "elle", "se", "son", "sa",
    "ses", "été", "être", "à", "ces", "leur", "nous", "mais", "où", "très",
])
_WORD = re.compile(r"[a-zà-öø-ÿœæ]+")


def english_score(text: str) -> int:
    """English function words minus French ones: > 0 means the text reads as English."""
    words = _WORD.findall(text.lower())
    return sum(w in _EN_WORDS for w in words) - sum(w in _FR_WORDS for w in words)


def keep_pair(en: str | None, fr: str | None) -> bool:
    """Drop empty pairs, identical sides and 'French' sides still in English (untranslated docs)."""
    if not en or not fr or en == fr or not re.search(r"[^\W\d_]", en):
        return False
    return english_score(fr) < 2


# ---------------------------------------------------------------- parallel extractors
# Each yields units: (unit name, [(en, fr), ...]) in reading order; a unit becomes one or more documents.

Unit = tuple[str, list[tuple[str, str]]]


def read_mo(path: Path) -> dict[str, str]:
    """msgid -> msgstr of a .mo file; contexts (ctx\\x04msgid) are dropped, plurals keep the singular."""
    with path.open("rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog
    out = {}
    for key, value in catalog.items():
        if isinstance(key, tuple):  # plural: (msgid, index); keep form 0 only
            if key[1] != 0:
                continue
            key = key[0]
        if not key or not value:  # the header has an empty msgid
            continue
        out[key.split("\x04")[-1]] = value
    return out


def order_by_sources(catalog: dict[str, str], files: list[Path], pattern: re.Pattern[str],
                     unescape) -> list[Unit]:
    """Order catalog entries as the source files use them, so a scenario's dialogue reads in sequence."""
    seen: set[str] = set()
    units: list[Unit] = []
    for path in files:
        pairs = []
        for m in pattern.finditer(path.read_text(encoding="utf-8", errors="replace")):
            msgid = unescape(next(g for g in m.groups() if g is not None))
            if msgid in catalog and msgid not in seen:
                seen.add(msgid)
                pairs.append((msgid, catalog[msgid]))
        if pairs:
            units.append(("/".join(path.parts[-3:]), pairs))  # e.g. Heir_To_The_Throne/scenarios/01_….cfg
    rest = [(k, catalog[k]) for k in sorted(catalog) if k not in seen]
    units.append(("unreferenced", rest))
    clean = clean_catalog_string
    return [(name, [(clean(e), clean(f)) for e, f in pairs]) for name, pairs in units]


_WML_STRING = re.compile(r'_\s*"((?:[^"]|"")*)"|_\s*<<(.*?)>>', re.S)
_C_STRING = re.compile(r'\bQ?N?_\(\s*"((?:[^"\\]|\\.)*)"\s*\)', re.S)


def wesnoth_units(roots: dict[str, Path]) -> list[Unit]:
    """Wesnoth's French catalogs, ordered by the campaign files (WML `_ "..."`, Lua `_ "..."`) that use them."""
    catalog: dict[str, str] = {}
    files: list[Path] = []
    for pkg in SOURCES["wesnoth"].packages:
        base = roots[pkg] / "usr/share/games/wesnoth/1.16"
        for mo in sorted(base.glob("locale/fr/LC_MESSAGES/*.mo")):
            for k, v in read_mo(mo).items():
                catalog.setdefault(k, v)
        files += sorted(p for p in (base / "data").rglob("*") if p.suffix in (".cfg", ".lua") and p.is_file())
    return order_by_sources(catalog, files, _WML_STRING, lambda s: s.replace('""', '"'))


def _c_unescape(s: str) -> str:
    s = s.replace("\\\n", "")
    return re.sub(r'\\(.)', lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), s)


def freeciv_units(roots: dict[str, Path]) -> list[Unit]:
    """Freeciv's core and nations catalogs, ordered by the rulesets (`_("...")`), so a nation's legend follows
    its name."""
    root = roots["freeciv-data"]
    catalog: dict[str, str] = {}
    for name in ("freeciv-nations", "freeciv-core"):
        for k, v in read_mo(root / f"usr/share/locale/fr/LC_MESSAGES/{name}.mo").items():
            catalog.setdefault(k, v)
    files = sorted(p for p in (root / "usr/share/games/freeciv").rglob("*.ruleset"))
    return order_by_sources(catalog, files, _C_STRING, _c_unescape)


class _BlockParser(HTMLParser):
    """Collects the text of block elements selected by `is_block`, skipping hidden and script content.

    A block nested in another splits it, so both languages cut their text at the same places.
    """

    VOID = frozenset(["area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
                      "track", "wbr"])

    def __init__(self, is_block):
        super().__init__(convert_charrefs=True)
        self.is_block = is_block
        self.stack: list[tuple[str, bool, bool]] = []  # (tag, opens a block, hidden)
        self.blocks: list[tuple[str, str]] = []  # (key, text)
        self.open_blocks: list[tuple[str, list[str]]] = []
        self.hidden = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        attrs = dict(attrs)
        hidden = "hidden" in attrs or tag in ("script", "style", "head")
        key = self.is_block(tag, attrs) if not self.hidden else None
        if key is not None:
            if self.open_blocks:
                self._flush_top()
            self.open_blocks.append((key, []))
        self.stack.append((tag, key is not None, hidden))
        self.hidden += hidden

    def handle_endtag(self, tag):
        while self.stack:
            t, is_block, hidden = self.stack.pop()
            self.hidden -= hidden
            if is_block:
                self._flush_top()
                self.open_blocks.pop()
            if t == tag:
                break

    def handle_data(self, data):
        if self.open_blocks and not self.hidden:
            self.open_blocks[-1][1].append(data)

    def _flush_top(self):
        key, parts = self.open_blocks[-1]
        self.blocks.append((key, normalize("".join(parts), one_line=True)))
        parts.clear()


def html_blocks(path: Path, is_block) -> list[tuple[str, str]]:
    parser = _BlockParser(is_block)
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return [(k, t) for k, t in parser.blocks]


def libreoffice_units(roots: dict[str, Path]) -> list[Unit]:
    """LibreOffice help paragraphs carry the same par_id/hd_id in every language: exact alignment."""
    en_dir = roots["libreoffice-help-en-us"] / "usr/share/libreoffice/help/en-US"
    fr_dir = roots["libreoffice-help-fr"] / "usr/share/libreoffice/help/fr"

    def by_id(tag, attrs):
        i = attrs.get("id") or ""
        return i if i.startswith(("par_id", "hd_id")) else None

    units = []
    for en_path in sorted(en_dir.rglob("*.html")):
        fr_path = fr_dir / en_path.relative_to(en_dir)
        if not fr_path.exists():
            continue
        fr = {}
        for k, t in html_blocks(fr_path, by_id):
            fr.setdefault(k, t)
        pairs = [(t, fr[k]) for k, t in html_blocks(en_path, by_id) if t and k in fr]
        units.append((str(en_path.relative_to(en_dir)), pairs))
    return units


def handbook_units(roots: dict[str, Path]) -> list[Unit]:
    """The handbook's HTML keeps paragraphs in div.para; pages with equal counts align one to one."""
    base = roots["debian-handbook"] / "usr/share/doc/debian-handbook/html"

    def para(tag, attrs):
        return "para" if tag == "div" and attrs.get("class") == "para" else None

    units = []
    for en_path in sorted((base / "en-US").glob("*.html")):
        fr_path = base / "fr-FR" / en_path.name
        if not fr_path.exists():
            continue
        en, fr = html_blocks(en_path, para), html_blocks(fr_path, para)
        if len(en) != len(fr):
            log.info("handbook: skip %s (%d vs %d paragraphs)", en_path.name, len(en), len(fr))
            continue
        units.append((en_path.stem, [(e, f) for (_, e), (_, f) in zip(en, fr, strict=True)]))
    return units


_MALLARD_BLOCKS = frozenset(["title", "subtitle", "desc", "p", "screen", "code"])


def _mallard_blocks(path: Path) -> list[str]:
    """Leaf text blocks of a Mallard page, skipping <info> (credits differ) and editorial <comment>s."""
    out: list[str] = []

    def walk(el: ET.Element, parts: list[str] | None) -> None:
        name = el.tag.rsplit("}", 1)[-1]
        if name in ("info", "comment"):
            if parts is not None and el.tail:
                parts.append(el.tail)
            return
        own = parts
        if name in _MALLARD_BLOCKS and parts is None:
            own = []
        if own is not None and el.text:
            own.append(el.text)
        for i, child in enumerate(el):
            if name == "keyseq" and i and own is not None:
                own.append("+")  # <keyseq><key>Ctrl</key><key>P</key></keyseq> reads Ctrl+P
            walk(child, own)
        if own is not parts:
            out.append(normalize("".join(own), one_line=True))
        if parts is not None and el.tail:
            parts.append(el.tail)

    walk(ET.parse(path).getroot(), None)
    return out


def gnome_units(roots: dict[str, Path]) -> list[Unit]:
    """GNOME help pages whose English and French Mallard sources have the same block structure."""
    base = roots["gnome-user-docs"] / "usr/share/help"
    units = []
    for en_path in sorted((base / "C").rglob("*.page")):
        fr_path = base / "fr" / en_path.relative_to(base / "C")
        if not fr_path.exists():
            continue
        en, fr = _mallard_blocks(en_path), _mallard_blocks(fr_path)
        if len(en) != len(fr):
            continue
        units.append((str(en_path.relative_to(base / "C")), list(zip(en, fr, strict=True))))
    return units


# ---------------------------------------------------------------- monolingual and code extractors
# Each yields units: (unit name, [segment, ...]).

MonoUnit = tuple[str, list[str]]


def dasher_units(roots: dict[str, Path], lang: str) -> list[MonoUnit]:
    """Dasher's training texts: one line per sentence; the French file uses U+0085 line breaks."""
    name = {"fr": "training_french_FR.txt", "en": "training_english_GB.txt"}[lang]
    text = normalize((roots["dasher-data"] / "usr/share/dasher" / name).read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    return [(name, lines)]


def devil_units(roots: dict[str, Path]) -> list[MonoUnit]:
    """The Devil's Dictionary entry by entry, via the dictd index (word, base64 offset, base64 length)."""
    base = roots["dict-devil"] / "usr/share/dictd"
    data = gzip.decompress((base / "devil.dict.dz").read_bytes())
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def b64(s: str) -> int:
        n = 0
        for ch in s:
            n = n * 64 + alphabet.index(ch)
        return n

    spans = set()
    for line in (base / "devil.index").read_text(encoding="utf-8").splitlines():
        word, off, length = line.split("\t")
        if not word.startswith("00-database"):
            spans.add((b64(off), b64(length)))
    entries = []
    for off, length in sorted(spans):
        entry = data[off:off + length].decode("utf-8", errors="replace")
        entries.append(normalize("\n".join(line.strip() for line in entry.split("\n"))))
    return [("devil", [e for e in entries if e])]


KJV_BOOKS = ("Ge", "Ruth", "Job", "Prv", "Eccl", "Mat", "John", "Acts")


def kjv_units(roots: dict[str, Path], budget: int) -> list[MonoUnit]:
    """A KJV slice (whole chapters of a few narrative and wisdom books), decoded by the package's `bible`."""
    out = subprocess.run(
        [str(roots["bible-kjv"] / "usr/bin/bible"), "-p", str(roots["bible-kjv-text"] / "usr/lib"),
         "-d", "bible.data", "-f", "Gen1:1-Rev22:21"], check=True, capture_output=True, text=True).stdout
    chapters: dict[tuple[str, str], list[str]] = {}
    for m in re.finditer(r"^(\d?[A-Za-z]+)(\d+):\d+ (.*)$", out, re.M):
        if m.group(1) in KJV_BOOKS:
            chapters.setdefault((m.group(1), m.group(2)), []).append(normalize(m.group(3), one_line=True))
    units, used = [], 0
    for (book, chapter), verses in chapters.items():  # canonical order, as printed
        size = sum(len(v.encode()) + 1 for v in verses)
        if used + size > budget:
            break
        units.append((f"{book} {chapter}", [" ".join(verses)]))
        used += size
    return units


def python_docs(roots: dict[str, Path]) -> list[dict]:
    """A seeded sample of whole standard-library modules (1-30 kB each), test suites and IDLE excluded."""
    base = roots["libpython3.11-stdlib"] / "usr/lib/python3.11"
    skip = ("test/", "tests/", "idlelib/", "lib2to3/", "site-packages/", "config-")
    files = [p for p in sorted(base.rglob("*.py"))
             if not p.is_symlink() and not any(s in str(p.relative_to(base)) + "/" for s in skip)
             and 1_000 <= p.stat().st_size <= 30_000]
    random.Random(SEED).shuffle(files)
    chosen, used = [], 0
    for path in files:
        try:
            text = normalize(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue
        if used + len(text.encode()) > CODE_TARGET_BYTES:
            continue
        chosen.append((str(path.relative_to(base)), text))
        used += len(text.encode())
    return [{"text": text, "source": "python-stdlib"} for _, text in sorted(chosen)]


# ---------------------------------------------------------------- assembly


def chunk(units: Iterable[MonoUnit]) -> Iterator[str]:
    """Group segments into documents: a unit boundary ends a document once it is long enough."""
    buf: list[str] = []
    size = 0
    for _, segments in units:
        if size >= DOC_MIN_CHARS:
            yield "\n".join(buf)
            buf, size = [], 0
        for seg in segments:
            if buf and size + len(seg) > DOC_MAX_CHARS and size >= DOC_MIN_CHARS:
                yield "\n".join(buf)
                buf, size = [], 0
            buf.append(seg)
            size += len(seg) + 1
    if buf:
        yield "\n".join(buf)


@dataclass
class Pair:
    """An aligned segment pair and where it came from (`unit`: page or file, used to group documents)."""

    en: str
    fr: str
    source: str
    unit: str
    split: str = "train"


def collect_pairs(roots: dict[str, Path]) -> list[Pair]:
    """All sources' pairs, filtered and deduplicated (first occurrence wins, in a fixed source order)."""
    extractors = {"wesnoth": wesnoth_units, "freeciv": freeciv_units, "debian-handbook": handbook_units,
                  "gnome-user-docs": gnome_units, "libreoffice-help": libreoffice_units}
    pairs, seen, dropped = [], set(), Counter()
    for source, extract in extractors.items():
        for unit, unit_pairs in extract(roots):
            for en, fr in unit_pairs:
                if not keep_pair(en, fr):
                    dropped[source] += 1
                    continue
                if (en, fr) in seen:
                    dropped[source + ":dup"] += 1
                    continue
                seen.add((en, fr))
                pairs.append(Pair(en, fr, source, unit))
        if source == "libreoffice-help":
            pairs = cap_pages(pairs, source, LIBREOFFICE_MAX_PAIRS)
        log.info("%s: %d pairs kept", source, sum(p.source == source for p in pairs))
    log.info("dropped: %s", dict(sorted(dropped.items())))
    return pairs


def cap_pages(pairs: list[Pair], source: str, cap: int) -> list[Pair]:
    """Keep a seeded selection of a source's whole pages (units) up to `cap` pairs, in original order."""
    units: dict[str, int] = {}
    for p in pairs:
        if p.source == source:
            units[p.unit] = units.get(p.unit, 0) + 1
    names = sorted(units)
    random.Random(SEED).shuffle(names)
    keep, total = set(), 0
    for name in names:
        if total + units[name] <= cap:
            keep.add(name)
            total += units[name]
    return [p for p in pairs if p.source != source or p.unit in keep]


def pick_test_candidates(pairs: list[Pair], n: int) -> list[Pair]:
    """General-domain, sentence-sized pairs whose sides occur nowhere else among the pairs."""
    en_count = Counter(p.en for p in pairs)
    fr_count = Counter(p.fr for p in pairs)
    pool = [p for p in pairs if p.source in ("wesnoth", "freeciv") and p.unit != "unreferenced"
            and 40 <= len(p.en) <= 400 and "\n" not in p.en + p.fr
            and en_count[p.en] == 1 and fr_count[p.fr] == 1]
    random.Random(SEED).shuffle(pool)
    return pool[:n]


def drop_containing(units: list[MonoUnit], needles: set[str]) -> list[MonoUnit]:
    """Remove every segment that contains a held-out text, so the test pairs stay unseen by pretraining."""
    segments = [s for _, segs in units for s in segs]
    blob = "\x00".join(segments)
    ends = list(itertools.accumulate(len(s) + 1 for s in segments))  # separator included
    bad = set()
    for needle in needles:
        i = blob.find(needle)
        while i != -1:
            bad.add(bisect.bisect_right(ends, i))
            i = blob.find(needle, i + 1)
    out, k = [], 0
    for name, segs in units:
        kept = [s for j, s in enumerate(segs, start=k) if j not in bad]
        k += len(segs)
        out.append((name, kept))
    return out


def pair_units(pairs: list[Pair], source: str, lang: str, exclude: set[str]) -> list[MonoUnit]:
    """One language side of a source's train pairs, unit by unit, each text used once."""
    units: dict[str, list[str]] = {}
    for p in pairs:
        text = getattr(p, lang)
        if p.source == source and p.split == "train" and text not in exclude:
            exclude.add(text)
            units.setdefault(p.unit, []).append(text)
    return list(units.items())


def fill(streams: list[tuple[str, list[str], bool]], target: int) -> list[dict]:
    """Take whole sources in priority order; the one flagged partial is sampled (seeded) to hit the target."""
    docs, used = [], 0
    for source, texts, partial in streams:
        if partial:
            order = list(range(len(texts)))
            random.Random(SEED).shuffle(order)
            keep = set()
            for i in order:
                if used >= target:
                    break
                keep.add(i)
                used += len(texts[i].encode())
            docs += [{"text": texts[i], "source": source} for i in sorted(keep)]
        else:
            docs += [{"text": t, "source": source} for t in texts]
            used += sum(len(t.encode()) for t in texts)
    return docs


def write_jsonl_gz(path: Path, records: list[dict]) -> None:
    """gzip -9 with mtime 0 and no file name in the header: reruns are byte-identical."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9,
                                              mtime=0) as gz:
        for r in records:
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode())
    tmp.replace(path)


def licence_paragraph(copyright_file: Path, name: str) -> str:
    """The full text of a `License: NAME` paragraph of a Debian machine-readable copyright file."""
    lines = copyright_file.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.strip() == f"License: {name}" and i + 1 < len(lines) and lines[i + 1].startswith(" "):
            body = []
            for cont in lines[i + 1:]:
                if not cont.startswith((" ", "\t")):
                    break
                body.append("" if cont.strip() == "." else cont[1:])
            return "\n".join(body).strip() + "\n"
    if name == "PSF-2.0":  # python's copyright file is free-form: take its PSF licence agreement
        text = copyright_file.read_text(encoding="utf-8")
        start = text.index("PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2")
        end = text.index("BEOPEN.COM LICENSE AGREEMENT", start)
        return text[start:end].strip() + "\n"
    raise KeyError(f"no License: {name} paragraph in {copyright_file}")


def write_licenses(out: Path, roots: dict[str, Path]) -> None:
    lic = out / "LICENSES"
    shutil.rmtree(lic, ignore_errors=True)
    (lic / "copyright").mkdir(parents=True)
    for name, (where, paragraph) in LICENSE_TEXTS.items():
        if where.startswith("/"):
            text = Path(where).read_text(encoding="utf-8")
        else:
            text = licence_paragraph(roots[where] / f"usr/share/doc/{where}/copyright", paragraph)
        (lic / name).write_text(text, encoding="utf-8")
    (lic / "LicenseRef-Public-Domain.txt").write_text(PUBLIC_DOMAIN_NOTE, encoding="utf-8")
    for pkg in sorted({p for s in SOURCES.values() for p in s.packages}):
        name = copyright_file(pkg, roots)
        if name:
            (lic / name).write_bytes((roots[pkg] / f"usr/share/doc/{pkg}/copyright").read_bytes())


def copyright_file(pkg: str, roots: dict[str, Path]) -> str | None:
    """Where a package's Debian copyright file goes under LICENSES/, or None when it adds nothing.

    Wesnoth's 16 campaign packages and the two LibreOffice help packages ship byte-identical files: keep one.
    A doc directory that is a symlink into a sibling package (libpython3.11-stdlib) has none of its own.
    """
    src = roots[pkg] / f"usr/share/doc/{pkg}/copyright"
    if not src.is_file() or src.parent.is_symlink():
        return None
    for other in SOURCES[next(n for n, s in SOURCES.items() if pkg in s.packages)].packages:
        if other == pkg:
            break
        twin = roots[other] / f"usr/share/doc/{other}/copyright"
        if twin.is_file() and not twin.parent.is_symlink() and twin.read_bytes() == src.read_bytes():
            return None
    return f"copyright/{pkg}.copyright"


def utf8_bytes(texts: Iterable[str]) -> int:
    return sum(len(t.encode()) for t in texts)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(cache: Path, out: Path) -> dict:
    fetched = fetch((p for s in SOURCES.values() for p in s.packages), cache)
    roots = {pkg: root for pkg, (_, root) in fetched.items()}

    pairs = collect_pairs(roots)
    candidates = pick_test_candidates(pairs, N_TEST_PAIRS + 200)
    held_out = {p.en for p in candidates} | {p.fr for p in candidates}
    for p in candidates:
        p.split = "test"  # provisionally: keeps their text out of the monolingual streams

    parallel_sources = ["wesnoth", "freeciv", "gnome-user-docs", "debian-handbook", "libreoffice-help"]
    mono: dict[str, list[dict]] = {}
    for lang in ("fr", "en"):
        used: set[str] = set()
        units = {s: pair_units(pairs, s, lang, used) for s in parallel_sources}
        units["dasher"] = dasher_units(roots, lang)
        if lang == "en":
            units["devils-dictionary"] = devil_units(roots)
            units["kjv"] = kjv_units(roots, int(KJV_SHARE * MONO_TARGET_BYTES))
        order = ["wesnoth", "freeciv", "dasher", "devils-dictionary", "kjv",  # general domain first, whole
                 "gnome-user-docs", "debian-handbook", "libreoffice-help"]
        streams = [(s, list(chunk(drop_containing(units[s], held_out))), s == "libreoffice-help")
                   for s in order if s in units]
        mono[lang] = fill(streams, MONO_TARGET_BYTES)

    # Keep the first N candidates absent from the final documents and from every other pair (not even as a
    # substring of a longer one); the rest go back to train.
    blobs = {lang: "\x00".join(d["text"] for d in docs) for lang, docs in mono.items()}
    others = {lang: "\x00".join(getattr(p, lang) for p in pairs if p.split == "train") for lang in ("en", "fr")}
    n_test = 0
    for p in candidates:
        clean = all(getattr(p, lang) not in blobs[lang] and getattr(p, lang) not in others[lang]
                    for lang in ("en", "fr"))
        if clean and n_test < N_TEST_PAIRS:
            n_test += 1
        else:
            p.split = "train"
    if n_test < N_TEST_PAIRS:
        raise RuntimeError(f"only {n_test} clean test pairs; raise the candidate pool")
    parallel = [{"en": p.en, "fr": p.fr, "source": p.source, "split": p.split} for p in pairs]
    code = python_docs(roots)

    out.mkdir(parents=True, exist_ok=True)
    records = {"parallel": parallel, "fr": mono["fr"], "en": mono["en"], "code": code}
    for name, recs in records.items():
        write_jsonl_gz(out / f"{name}.jsonl.gz", recs)
    write_licenses(out, roots)
    manifest = make_manifest(out, records, fetched)
    write_readme(out, manifest)
    manifest["other_files"] = {
        str(p.relative_to(out)): sha256(p) for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "MANIFEST.json" and not p.name.endswith(".jsonl.gz")}
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    (out / "MANIFEST.json").write_text(text, encoding="utf-8")
    return manifest


def make_manifest(out: Path, records: dict[str, list[dict]], fetched: dict[str, tuple[str, Path]]) -> dict:
    """Counts, bytes and hashes per file and per source; no dates, so the file is deterministic."""
    roots = {pkg: root for pkg, (_, root) in fetched.items()}
    files: dict[str, dict] = {}
    per_source: dict[str, dict] = {}
    for name, recs in records.items():
        path = out / f"{name}.jsonl.gz"
        entry: dict = {"records": len(recs), "sha256": sha256(path), "compressed_bytes": path.stat().st_size}
        if name == "parallel":
            entry["utf8_bytes"] = {lang: utf8_bytes(r[lang] for r in recs) for lang in ("en", "fr")}
            entry["splits"] = dict(sorted(Counter(r["split"] for r in recs).items()))
        else:
            entry["utf8_bytes"] = utf8_bytes(r["text"] for r in recs)
        entry["by_source"] = {}
        for src in sorted({r["source"] for r in recs}):
            sub = [r for r in recs if r["source"] == src]
            if name == "parallel":
                stats = {"pairs": len(sub), "test": sum(r["split"] == "test" for r in sub),
                         "utf8_bytes": {lang: utf8_bytes(r[lang] for r in sub) for lang in ("en", "fr")}}
            else:
                stats = {"docs": len(sub), "utf8_bytes": utf8_bytes(r["text"] for r in sub)}
            entry["by_source"][src] = stats
            per_source.setdefault(src, {})[name] = stats
        files[f"{name}.jsonl.gz"] = entry
    sources = {
        name: {"packages": {p: fetched[p][0] for p in s.packages}, "license": s.license,
               "license_files": list(s.license_files), "copyright": s.copyright, "upstream": s.upstream,
               "copyright_files": [f for p in s.packages if (f := copyright_file(p, roots))],
               "domain": s.domain, "counts": per_source[name]}
        for name, s in SOURCES.items() if name in per_source}
    return {
        "name": "fournil-sample-corpus",
        "builder": "scripts/build_sample_corpus.py",
        "builder_version": SCRIPT_VERSION,
        "builder_sha256": sha256(Path(__file__)),
        "distribution": "Debian 12 (bookworm) main",
        "files": files,
        "sources": sources,
        "totals": {name: ({"pairs": f["records"], **f["splits"], "utf8_bytes": f["utf8_bytes"]}
                          if name == "parallel" else {"docs": f["records"], "utf8_bytes": f["utf8_bytes"]})
                   for name, f in ((n.split(".")[0], files[n]) for n in files)},
    }


README = """\
# fournil sample corpus

A small, redistributable French/English/code corpus embedded in the package so that `fournil bake` and the
tests run offline. It is real text from Debian 12 (bookworm) main packages, not synthetic data. Generated by
`scripts/build_sample_corpus.py`; every number below comes from `MANIFEST.json`.

## Contents

| file | records | UTF-8 MB | gzip MB | fields |
|---|---|---|---|---|
{contents}

Read it with `fournil.corpus.iter_sample(category)`, category one of `fr`, `en`, `code`, `parallel`.

## Sources

| source | domain | FR docs (MB) | EN docs (MB) | pairs (test) | licence | Debian packages (version) |
|---|---|---|---|---|---|---|
{sources}

Copyright holders and upstreams:

{holders}

## Licences

`MANIFEST.json` gives each source's SPDX licence, its licence files and its Debian copyright files. Full texts
are in `LICENSES/` (GPL-2.0, MPL-2.0, CC-BY-SA-3.0, PSF-2.0, and a public-domain note); the Debian copyright
files, which name upstream authors and translators, are in `LICENSES/copyright/` (byte-identical ones once).
When redistributing a subset, keep the licence and attribution of every source it contains. The Debian
Administrator's Handbook is dual-licensed (GPL-2.0-or-later or CC-BY-SA-3.0, recipient's choice).

## How it was built

- Parallel pairs: gettext catalogs (Wesnoth, Freeciv: msgid to French msgstr; contexts dropped, plurals
  reduced to the singular); LibreOffice help paragraphs aligned by their `par_id`/`hd_id` (hidden OS variants
  skipped); Debian Administrator's Handbook `div.para` and GNOME Mallard blocks aligned by position on pages
  with equal block counts (`<info>` and editorial `<comment>` skipped).
- Cleaning: NFC, Unix newlines, no control characters; markup removed; Wesnoth/Freeciv strings with
  placeholders (`$var`, `%s`) or leftover markup dropped on both sides; GTK access-key underscores removed.
- Filtering: pairs with identical sides, or whose French side still reads as English (function-word
  heuristic), are dropped; pairs are deduplicated; LibreOffice is capped to a seeded set of whole pages.
- Monolingual streams: each side of the *train* pairs in reading order (Wesnoth strings follow the campaign
  files, Freeciv strings its rulesets), each text once, grouped into documents of a few hundred to a few
  thousand characters; plus Dasher's FR and EN training texts, and (EN only) The Devil's Dictionary and a KJV
  slice. General-domain sources are taken whole; LibreOffice help is sampled to balance FR and EN at about
  5 MB each. Code: a seeded sample of whole Python 3.11 standard-library modules.
- Held-out test split: {n_test} sentence-sized Wesnoth/Freeciv narrative pairs whose sides occur in no other
  pair. Every monolingual segment containing their text is removed, and the build verifies that neither side
  appears in `fr.jsonl.gz` or `en.jsonl.gz` (`tests/corpus/test_sample.py` checks it again).

## Known biases and limits

- Software documentation (LibreOffice, GNOME, Debian handbook) makes up {software}:
  imperative UI prose and menu names. Freeciv adds game help.
- The general-domain part is fantasy narrative and dialogue (Wesnoth), encyclopedic nation histories
  (Freeciv), 19th-century satire (Devil's Dictionary), archaic Early Modern English (KJV, under 10 % of EN)
  and forum/news French of undocumented provenance (Dasher). No contemporary news or encyclopedia text.
- Translations are community work of uneven register; French typography (non-breaking spaces before `?!:;`)
  is kept where translators used it. FR and EN monolingual streams overlap in content (two sides of pairs).
- Game strings that no campaign or ruleset file references come in catalog (alphabetical) order.

## Rebuild

```
python scripts/build_sample_corpus.py   # Debian bookworm apt sources; about 460 MB of downloads
```

Packages are downloaded with `apt-get download` into `/tmp/fournil-sample-cache` (`--cache` to change). The
build is deterministic: the same package versions (listed in `MANIFEST.json`) give byte-identical files.
"""


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def write_readme(out: Path, manifest: dict) -> None:
    """The datasheet, generated from the manifest so its numbers can never drift from the data."""
    files = manifest["files"]
    contents = []
    for name, unit in (("fr", "docs"), ("en", "docs"), ("code", "files")):
        f = files[f"{name}.jsonl.gz"]
        contents.append(f"| `{name}.jsonl.gz` | {f['records']} {unit} | {_mb(f['utf8_bytes'])} | "
                        f"{_mb(f['compressed_bytes'])} | `text`, `source` |")
    f = files["parallel.jsonl.gz"]
    contents.append(f"| `parallel.jsonl.gz` | {f['records']} pairs ({f['splits']['train']} train, "
                    f"{f['splits']['test']} test) | {_mb(f['utf8_bytes']['en'])} EN + "
                    f"{_mb(f['utf8_bytes']['fr'])} FR | {_mb(f['compressed_bytes'])} | "
                    "`en`, `fr`, `source`, `split` |")
    sources, holders = [], []
    for name, src in manifest["sources"].items():
        c = src["counts"]

        def docs(cat: str, c=c) -> str:
            return f"{c[cat]['docs']} ({_mb(c[cat]['utf8_bytes'])})" if cat in c else "-"

        pairs = f"{c['parallel']['pairs']} ({c['parallel']['test']})" if "parallel" in c else "-"
        if "code" in c:
            pairs = f"code: {docs('code')}"
        pkgs = ", ".join(src["packages"])
        if name == "wesnoth":
            pkgs = f"wesnoth-1.16-data + {len(src['packages']) - 1} campaign packages"
        versions = ", ".join(sorted(set(src["packages"].values())))
        sources.append(f"| {name} | {src['domain']} | {docs('fr')} | {docs('en')} | {pairs} | "
                       f"{src['license']} | {pkgs} ({versions}) |")
        holders.append(f"- {name}: {src['copyright']} ({src['upstream']})")
    software = ("libreoffice-help", "debian-handbook", "gnome-user-docs")

    def share(name: str, lang: str | None = None) -> str:
        by_source = files[f"{name}.jsonl.gz"]["by_source"]
        size = {s: (v["utf8_bytes"][lang] if lang else v["utf8_bytes"]) for s, v in by_source.items()}
        return f"{100 * sum(size.get(s, 0) for s in software) / sum(size.values()):.0f} %"

    software_share = (f"{share('fr')} of the French text, {share('en')} of the English text\n  and "
                      f"{share('parallel', 'en')} of the parallel text (EN bytes)")
    text = README.format(contents="\n".join(contents), sources="\n".join(sources), holders="\n".join(holders),
                         n_test=files["parallel.jsonl.gz"]["splits"]["test"], software=software_share)
    (out / "README.md").write_text(text, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where .deb files go, and are unpacked")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    manifest = build(args.cache, args.out)
    for name, total in manifest["totals"].items():
        log.info("%s: %s", name, total)


if __name__ == "__main__":
    main()
