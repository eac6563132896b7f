"""A source tree of malformed files, each paired with the error kind the reader must report for it.

Every file holds at least one good record next to its bad one where the format allows, so a test can tell
"the bad record was counted and the rest was read" from "the whole file was dropped".
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

GOOD_FR = ("La boulangerie du village ouvre ses portes à six heures du matin, et le boulanger prépare la pâte "
           "pendant la nuit pour que les habitants trouvent du pain chaud avant de partir au travail.")
GOOD_EN = ("The village bakery opens its doors at six in the morning, and the baker prepares the dough during "
           "the night so that people find warm bread before they leave for work.")
HUGE_LINE_BYTES = 4096  # the reader's per-record cap is lowered to this in the tests


def _jsonl(*records: object) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()


def build(root: Path) -> dict[str, set[str]]:
    """Write the hostile tree under root/{mono,parallel}; return file name → error kinds expected for it."""
    mono, par = root / "mono", root / "parallel"
    mono.mkdir(parents=True)
    par.mkdir(parents=True)
    good = _jsonl({"text": GOOD_FR})
    expected: dict[str, set[str]] = {}

    def put(directory: Path, name: str, data: bytes, *kinds: str) -> None:
        (directory / name).write_bytes(data)
        expected[name] = set(kinds)

    put(mono, "truncated.jsonl.gz", gzip.compress(good * 50)[:-30], "truncated_file")
    import zstandard

    put(mono, "truncated.jsonl.zst", zstandard.ZstdCompressor().compress(good * 50)[:-7], "truncated_file")
    put(mono, "not-zstd.jsonl.zst", good, "truncated_file")
    put(mono, "not-gzip.jsonl.gz", good, "truncated_file")
    put(mono, "bad-utf8.jsonl", good + b'{"text": "caf\xe9 cr\xe8me"}\n' + good, "invalid_utf8")
    put(mono, "bad-line.jsonl", good + b'{"text": "unterminated\n' + good, "malformed_json")
    put(mono, "non-object.jsonl", good + b"[1, 2, 3]\n42\nnull\n\"text\"\n", "malformed_json")
    put(mono, "missing-field.jsonl", good + _jsonl({"body": GOOD_FR}), "missing_field")
    put(mono, "text-not-string.jsonl", good + _jsonl({"text": 42}, {"text": ["a"]}, {"text": None}), "missing_field")
    put(mono, "huge-line.jsonl", good + _jsonl({"text": "x" * (HUGE_LINE_BYTES * 3)}) + good, "record_too_large")
    put(mono, "empty.jsonl", b"", "empty_file")
    put(mono, "empty.jsonl.gz", gzip.compress(b""), "no_documents")
    put(mono, "blank-lines.jsonl", b"\n \n\t\n", "no_documents")
    put(mono, "fake.parquet", b"PAR1 this is not a parquet file PAR1", "unreadable_parquet")
    # Fixed bytes, not os.urandom: a random draw can hold a NUL, which is reported as nul_bytes (CI drew one).
    put(mono, "junk.txt", bytes(range(0x80, 0xC0)) + b"\xff\xfe\n", "invalid_utf8")
    put(mono, "bom.jsonl", b"\xef\xbb\xbf" + good + good)  # a BOM is repaired, not an error: both records kept
    put(mono, "nul.jsonl", good[:5] + b"\0" + good[5:] + good, "nul_bytes")
    put(mono, "crlf.jsonl", good.replace(b"\n", b"\r\n") * 2)  # CRLF is fine: nothing to report
    put(mono, "deep.jsonl", good + b"[" * 3000 + b"\n", "malformed_json")
    put(mono, "surrogate.jsonl", good + b'{"text": "half an emoji \\ud83d here"}\n', "invalid_unicode")
    put(mono, "unknown.xyz", b"what format is this?\n", "unknown_format")
    put(mono, "trailing-garbage.jsonl.gz", gzip.compress(good) + b"garbage", "truncated_file")
    (mono / "folder.jsonl").mkdir()  # a directory named like a file: its contents are read, it is no error
    (mono / "folder.jsonl" / "inner.jsonl").write_bytes(good)
    expected["inner.jsonl"] = set()
    os.symlink("loop-b.jsonl", mono / "loop-a.jsonl")
    os.symlink("loop-a.jsonl", mono / "loop-b.jsonl")
    expected["loop-a.jsonl"] = expected["loop-b.jsonl"] = {"unreadable_file"}
    os.symlink("does-not-exist.jsonl", mono / "dangling.jsonl")
    expected["dangling.jsonl"] = {"unreadable_file"}
    locked = mono / "locked.jsonl"
    locked.write_bytes(good)
    locked.chmod(0)
    expected["locked.jsonl"] = {"unreadable_file"}  # read as a non-root user (see the test)

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": [GOOD_FR]}), mono / "wrong-column.parquet")
    expected["wrong-column.parquet"] = {"missing_field"}
    pq.write_table(pa.table({"text": [1, 2]}), mono / "int-column.parquet")
    expected["int-column.parquet"] = {"missing_field"}

    tsv = f"fr\ten\n{GOOD_FR}\t{GOOD_EN}\nseulement une cellule\nun\tdeux\ttrois\n".encode()
    put(par, "wrong-columns.tsv", tsv, "malformed_tsv")
    put(par, "crlf.tsv", f"{GOOD_FR}\t{GOOD_EN}\r\n".encode() * 2)
    po = (f'msgid "{GOOD_EN}"\nmsgstr "{GOOD_FR}"\n\n'
          'msgid "Open"\nmsgstr "Ouvrir\n\n'  # unterminated string
          'msgid "Close"\nmsgstr\n"Fermer"\n\n'
          'this is not gettext\n\n'  # a line that is no keyword
          '"orphan continuation"\n').encode()
    put(par, "broken.po", po, "malformed_po")
    put(par, "pairs.jsonl", _jsonl({"en": GOOD_EN, "fr": GOOD_FR}, {"en": GOOD_EN}, {"en": 1, "fr": 2}),
        "missing_field")
    (par / "alone.en").write_text(GOOD_EN + "\n", encoding="utf-8")
    expected["alone.en"] = {"unknown_format"}  # `auto` cannot read a bare .en; the pairs source below can
    return expected


def build_pairs(root: Path) -> dict[str, set[str]]:
    """Line-aligned pairs: one unpaired x.en, one misaligned pair, one good pair."""
    root.mkdir(parents=True)
    (root / "lonely.en").write_text(GOOD_EN + "\n", encoding="utf-8")
    (root / "short.en").write_text(f"{GOOD_EN}\n{GOOD_EN}\n", encoding="utf-8")
    (root / "short.fr").write_text(f"{GOOD_FR}\n", encoding="utf-8")
    (root / "good.en").write_text(f"{GOOD_EN}\n", encoding="utf-8")
    (root / "good.fr").write_text(f"{GOOD_FR}\n", encoding="utf-8")
    return {"lonely.en": {"missing_pair"}, "short.en": {"misaligned_pairs"}, "good.en": set()}


# --- Independent oracles for "no data lost": what a source holds, worked out without fournil's reader. ---

def compress(parts: list[bytes], codec: str, flushes: int = 0, checksum: bool = True) -> bytes:
    """Each part as its own gzip member / zstd frame (concatenated: one stream), each split into `flushes` + 1
    blocks, so that a cut loses only the tail and not the whole part."""
    import zlib

    import zstandard

    out = []
    for part in parts:
        cuts = [len(part) * (i + 1) // (flushes + 1) for i in range(flushes + 1)]
        if codec == "gzip":
            c = zlib.compressobj(wbits=31)
            pieces = [c.compress(part[a:b]) + c.flush(zlib.Z_FULL_FLUSH) for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
            out += [*pieces, c.flush()]
        else:
            z = zstandard.ZstdCompressor(write_checksum=checksum).compressobj()
            pieces = [z.compress(part[a:b]) + z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
                      for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
            out += [*pieces, z.flush()]
    return b"".join(out)


def reference_decode(blob: bytes, codec: str) -> tuple[bytes, bool]:
    """The longest output any decoder can give for `blob`: fed one byte at a time, a fresh decompressor per
    member or frame (gzip's zero padding between members skipped). Returns (output, whether a fault ends it)."""
    import zlib

    import zstandard

    error = zlib.error if codec == "gzip" else zstandard.ZstdError
    out, decoder, i = [], None, 0
    while i < len(blob):
        if decoder is None:
            if codec == "gzip" and blob[i] == 0:
                i += 1
                continue
            decoder = zlib.decompressobj(wbits=31) if codec == "gzip" else zstandard.ZstdDecompressor().decompressobj()
        try:
            out.append(decoder.decompress(blob[i:i + 1]))
        except error:
            return b"".join(out), True
        i += 1
        if decoder.eof:
            decoder = None
    return b"".join(out), decoder is not None


def jsonl_units(data: bytes, fault: bool = False) -> int:
    """How many outcomes (a document, or an input error) a jsonl file decoding to `data` must give: one per
    non-blank line (the partial last line too, unless a fault ends the stream there), one for the fault, and one
    `no_documents` for a file with neither records nor any error (an empty file: `empty_file`)."""
    *complete, tail = data.split(b"\n")
    lines = complete + ([tail] if tail and not fault else [])
    units, noted = 0, fault
    for i, raw in enumerate(lines):
        if i == 0 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if b"\0" in raw:  # NUL bytes are repaired and reported; the line is still one record (or blank)
            noted, raw = True, raw.replace(b"\0", b"")
        try:
            units += bool(raw.decode("utf-8").strip())
        except UnicodeDecodeError:
            units += 1
    return units + fault + (units == 0 and not noted)


@dataclass
class Walked:
    """A source as `os.walk` sees it, with this test's own rules (links followed, each folder and file once by
    real path, a link to a folder on the current path not followed, names starting with a dot skipped)."""

    files: dict[str, list[str]] = field(default_factory=dict)  # real path of a regular file → rel paths to it
    special: dict[str, list[str]] = field(default_factory=dict)  # FIFO, socket, device → rel paths to it
    broken: list[str] = field(default_factory=list)  # dangling links and link loops
    loops: list[str] = field(default_factory=list)  # links to a folder on the current path


def walk_source(root: Path) -> Walked:
    import stat

    found = Walked()
    chain = {str(root): frozenset({os.path.realpath(root)})}
    seen = set(chain[str(root)])
    for top, dirs, files in os.walk(root, followlinks=True):
        prefix = "" if top == str(root) else os.path.relpath(top, root) + "/"
        for name in sorted(dirs):
            real = os.path.realpath(os.path.join(top, name))
            if name.startswith(".") or real in seen:
                if real in chain[top] and not name.startswith("."):
                    found.loops.append(prefix + name)
                dirs.remove(name)
                continue
            seen.add(real)
            chain[os.path.join(top, name)] = chain[top] | {real}
        dirs.sort()  # fournil walks names in order: the same folder is then reached by the same path first
        for name in files:
            if name.startswith("."):
                continue
            path = os.path.join(top, name)
            try:
                mode = os.stat(path).st_mode
            except OSError:
                found.broken.append(prefix + name)
                continue
            kind = found.files if stat.S_ISREG(mode) else found.special
            kind.setdefault(os.path.realpath(path), []).append(prefix + name)
    return found
