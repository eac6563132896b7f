"""Reading sources into datatrove Documents, robust to bad input.

Every source file is read record by record; a bad record (invalid UTF-8, malformed JSON, missing text field, a
truncated gzip, an empty file, a record too large…) becomes an `InputError` with file and line, is counted and
written to `errors/`, and the run goes on until the `--max-errors` budget is spent. Nothing is dropped silently.

A large plain (uncompressed) jsonl or TSV file is shared by several tasks: each reads the records that start
in its byte range, and first counts the newlines before that range, so ids and error lines stay those of a
one-task run (`SourceReader.units`).

Parallel pairs (jsonl with `en`/`fr` fields, `x.en`+`x.fr` line-aligned files, TSV, gettext `.po`) are rendered as
one training document per pair, its direction (EN→FR or FR→EN) drawn per pair from the seed, as CroissantLLM did.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from fournil.console import FournilError
from fournil.corpus.config import SourceConfig
from fournil.corpus.text import encodable

MAX_RECORD_BYTES = 16 << 20  # a single record above this is refused (a 100 MB line is a dump, not a document)
MIN_RANGE_BYTES = 1 << 20  # the smallest share of a file a task is given: below, splitting costs more than it saves
_SPLITTABLE = ("jsonl", "tsv")  # one record a line: a byte range can start at any line
_COUNT_BLOCK = 16 << 20  # bytes read at a time while counting the newlines before a range
PAIR_TEMPLATE = "[{a}] {ta}\n[{b}] {tb}"
_SUFFIX_FORMAT = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".txt": "text", ".md": "text",
                  ".tsv": "tsv", ".po": "po"}
_CODE_SUFFIXES = {".py", ".js", ".ts", ".c", ".h", ".cpp", ".rs", ".go", ".java", ".sh", ".rb", ".php", ".sql"}


@dataclass
class InputError:
    """One bad record: where it is and why it was skipped or repaired."""

    kind: str
    file: str
    line: int
    detail: str
    source: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.detail}"


# Kinds whose record is repaired and kept: reported and counted, but no record is lost to them.
REPAIRED = frozenset({"nul_bytes"})
_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder"}


class ErrorBudgetExceeded(FournilError):
    """More bad records than `--max-errors` allows."""


class Listed(NamedTuple):
    """One entry of a source's listing."""

    path: Path
    rel: str  # the path below the source's root, as walked: the file part of document ids (unique in a source)
    problem: tuple[str, str] | None = None  # (kind, detail) when the walk listed it without entering it


def source_files(source: SourceConfig) -> list[Listed]:
    """The entries of a source in a stable order (for `pairs`: the `.en` side of each pair).

    Folders are walked following links to files and folders; a file or folder reached twice through links is
    listed once; a link back to a folder that contains it is listed with its problem instead of followed. Every
    entry that is not a folder is listed, whatever it is (FIFO, device, dangling link): `read_file` reports it.
    Names starting with a dot are skipped.
    """
    path = Path(source.path).expanduser()
    if source.format == "hf":  # one dataset, read by one task (datasets does its own sharding on the Hub side)
        return [Listed(path, path.name)]
    if source.format == "pairs":
        if os.path.lexists(f"{path}.en") and not path.is_dir():
            return [Listed(Path(f"{path}.en"), f"{path.name}.en")]
        return _walk([path], path, lambda name: name.endswith(".en"))
    if path.is_dir():
        return _walk([path], path)
    if os.path.lexists(path):
        return [Listed(path, path.name)]
    return _walk(sorted(path.parent.glob(path.name)), path.parent)


def _walk(starts: list[Path], root: Path, wanted=lambda name: True) -> list[Listed]:
    out: list[Listed] = []
    entered: set[tuple[int, int]] = set()  # folders already walked, by (device, inode)
    files: set[tuple[int, int]] = set()

    def visit(path: Path, rel: str, active: frozenset) -> None:
        try:
            st = path.stat()
        except OSError:  # a dangling link or a link loop: listed, `read_file` reports it
            if wanted(path.name):
                out.append(Listed(path, rel))
            return
        key = (st.st_dev, st.st_ino)
        if not stat.S_ISDIR(st.st_mode):
            if wanted(path.name) and key not in files:
                files.add(key)
                out.append(Listed(path, rel))
            return
        if key in active:
            out.append(Listed(path, rel, ("symlink_loop", f"a link to {os.path.realpath(path)}, a folder that "
                                                          "contains it; not followed")))
            return
        if key in entered:  # reached before through another link: its files are listed once, under that path
            return
        entered.add(key)
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            out.append(Listed(path, rel, ("unreadable_folder", f"{type(exc).__name__}: {exc.strerror or exc}")))
            return
        for name in names:
            if not name.startswith("."):
                visit(path / name, f"{rel}/{name}" if rel else name, active | {key})

    for start in starts:
        visit(start, "" if start == root else start.relative_to(root).as_posix(), frozenset())
    return out


def file_format(path: Path, source: SourceConfig) -> str:
    if source.format != "auto":
        return source.format
    suffixes = [s for s in path.suffixes if s not in (".gz", ".zst")]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in _SUFFIX_FORMAT:
        return _SUFFIX_FORMAT[suffix]
    return "text" if source.category == "code" or suffix in _CODE_SUFFIXES or not suffix else "unknown"


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.name.endswith((".gz", ".zst")):
        return io.BufferedReader(_Decompressed(path, "zstd" if path.name.endswith(".zst") else "gzip"))
    return open(path, "rb")


class CorruptInput(Exception):
    """A compressed stream that is not what its suffix says, or ends before its end-of-stream marker."""


class _Decompressed(io.RawIOBase):
    """A gzip or zstd file as one stream, member after member (frame after frame).

    Everything decoded before a fault (a cut, foreign bytes) is returned first; the fault is raised by the read
    after it. Unlike zstandard's stream_reader, a cut last frame is an error; unlike the gzip module, the text
    decoded by the call that meets the fault is not lost with it.
    """

    CHUNK = 1 << 16

    def __init__(self, path: Path, codec: str):
        self._raw = open(path, "rb")  # noqa: SIM115 (closed by close())
        self._codec = codec
        if codec == "zstd":
            import zstandard

            self._zstd, self._error = zstandard.ZstdDecompressor(), zstandard.ZstdError
        else:
            self._error = zlib.error
        self._decoder = None  # the member being decoded; None between members
        self._start = self._pos = 0  # raw offsets: where that member starts, the next byte to decode
        self._buffer, self._fault = b"", None

    def readable(self) -> bool:
        return True

    def _new_decoder(self):
        return self._zstd.decompressobj() if self._codec == "zstd" else zlib.decompressobj(wbits=31)

    def readinto(self, target) -> int:
        while not self._buffer:
            if self._fault:
                raise self._fault
            chunk = self._raw.read(self.CHUNK)
            if not chunk:
                if self._decoder is not None:
                    unit = "frame" if self._codec == "zstd" else "member"
                    raise CorruptInput(f"the {self._codec} stream ends in the middle of a {unit} (truncated file)")
                return 0
            self._buffer = self._feed(chunk)
        n = min(len(target), len(self._buffer))
        target[:n], self._buffer = self._buffer[:n], self._buffer[n:]
        return n

    def _feed(self, data: bytes, step: int = 0) -> bytes:
        """Decode `data` (at raw offset self._pos), `step` bytes per call when non-zero; stop at a fault."""
        out = []
        while data:
            if self._decoder is None:
                if self._codec == "gzip":  # gzip allows zero padding between members
                    kept = data.lstrip(b"\0")
                    self._pos, data = self._pos + len(data) - len(kept), kept
                    if not data:
                        break
                self._decoder, self._start = self._new_decoder(), self._pos
            piece = data[:step] if step else data
            try:
                out.append(self._decoder.decompress(piece))
            except self._error as exc:
                if step:
                    self._fault = CorruptInput(f"not a valid {self._codec} stream: {exc}")
                    break
                return b"".join(out) + self._replay(data)
            used = len(piece) - len(self._decoder.unused_data) if self._decoder.eof else len(piece)
            self._pos, data = self._pos + used, data[used:]
            if self._decoder.eof:
                self._decoder = None
        return b"".join(out)

    def _replay(self, data: bytes) -> bytes:
        """A decoder raises without returning what it decoded in that call: bring a new one to the start of
        `data` (decoding this member again up to there), then feed `data` a byte at a time up to the fault."""
        here = self._raw.tell()
        self._raw.seek(self._start)
        self._decoder = self._new_decoder()
        left = self._pos - self._start
        while left > 0:
            block = self._raw.read(min(left, self.CHUNK))
            self._decoder.decompress(block)  # decoded before, already returned
            left -= len(block)
        self._raw.seek(here)
        return self._feed(data, step=1)

    def close(self) -> None:
        self._raw.close()
        super().close()


def pair_direction(seed: int, en: str, fr: str) -> bool:
    """True when this pair is rendered French first; a hash, so the same pair always gets the same order."""
    return hashlib.blake2b(f"{seed}\0{en}\0{fr}".encode(), digest_size=1).digest()[0] & 1 == 1


def render_pair(en: str, fr: str, seed: int) -> str:
    if pair_direction(seed, en, fr):
        return PAIR_TEMPLATE.format(a="fr", ta=fr, b="en", tb=en)
    return PAIR_TEMPLATE.format(a="en", ta=en, b="fr", tb=fr)


class SourceReader(PipelineStep):
    """Read every source of the recipe; task `rank` reads units rank, rank + world_size, … (see `units`)."""

    type = "📖 - READER"
    name = "fournil sources"
    max_record_bytes = MAX_RECORD_BYTES
    min_range_bytes = MIN_RANGE_BYTES

    def __init__(self, sources: dict[str, SourceConfig], errors_dir: str, seed: int = 0, max_errors: int = 100):
        super().__init__()
        self.sources, self.errors_dir, self.seed, self.max_errors = sources, errors_dir, seed, max_errors
        listings = {name: source_files(source) for name, source in sorted(sources.items())}
        self.files = [(name, str(entry.path)) for name, listing in listings.items() for entry in listing]
        self._listed = {name: {str(entry.path): entry for entry in listing} for name, listing in listings.items()}
        self._errors: list[InputError] = []
        self._ranges: list[dict] = []
        self._source = ""

    def _size(self, name: str, path: str) -> tuple[int, bool]:
        """(size in bytes, whether byte ranges of it can go to different tasks)."""
        entry = self._listed.get(name, {}).get(path)
        try:
            st = os.stat(path)
        except OSError:
            return 0, False
        splittable = (stat.S_ISREG(st.st_mode) and not (entry and entry.problem)
                      and not path.endswith((".gz", ".zst")) and file_format(Path(path), self.sources[name]) in _SPLITTABLE)
        return st.st_size, splittable

    def units(self, world_size: int) -> list[tuple[str, str, int, int | None]]:
        """The work, as (source, file, start, end) in file order; `end` None reads to the end of the file.

        Every file is one unit, except plain jsonl/TSV files larger than a task's fair share (the total size over
        `world_size`, at least `min_range_bytes`): those are cut into equal byte ranges of about that share. A
        range holds the records that start in it (the last one may run past its end). Compressed files stay one
        unit: a gzip or zstd stream cannot be entered in the middle. Every task computes the same list.
        """
        sizes = [self._size(name, path) for name, path in self.files]
        share = max(self.min_range_bytes, -(-sum(size for size, _ in sizes) // max(world_size, 1)))
        units: list[tuple[str, str, int, int | None]] = []
        for (name, path), (size, splittable) in zip(self.files, sizes, strict=True):
            parts = -(-size // share) if splittable and size > share else 1
            bounds = [size * i // parts for i in range(parts)] + [None]
            units += [(name, path, bounds[i], bounds[i + 1]) for i in range(parts)]
        return units

    def pieces(self, range_bytes: int) -> int:
        """How many units the files make when split into ranges of at least `range_bytes` (a task count)."""
        return sum(-(-size // range_bytes) if splittable and size > range_bytes else 1
                   for size, splittable in (self._size(name, path) for name, path in self.files))

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        self._errors, self._ranges = [], []
        try:
            for name, path, start, end in self.units(world_size)[rank::world_size]:
                for doc in self.read_file(name, Path(path), start, end):
                    self.stat_update("documents")
                    yield doc
        finally:
            out = Path(self.errors_dir) / f"{rank:05d}.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "w", encoding="utf-8") as f:
                for err in self._errors:
                    f.write(json.dumps(err.__dict__, ensure_ascii=False) + "\n")
            ranges = Path(self.errors_dir) / "ranges" / f"{rank:05d}.jsonl"
            if self._ranges or ranges.exists():
                ranges.parent.mkdir(parents=True, exist_ok=True)
                with open(ranges, "w", encoding="utf-8") as f:
                    for record in self._ranges:
                        f.write(json.dumps(record, ensure_ascii=False) + "\n")

    def error(self, kind: str, file: Path, line: int, detail: str) -> None:
        self._errors.append(InputError(kind, str(file), line, detail, self._source))
        self.stat_update(f"input_error_{kind}")
        if 0 <= self.max_errors < len(self._errors):
            raise ErrorBudgetExceeded(f"more than {self.max_errors} bad input records (last: {self._errors[-1]})")

    def read_file(self, name: str, path: Path, start: int = 0, end: int | None = None) -> Iterator[Document]:
        """The documents of one file, or of the records starting in [start, end) of a plain jsonl/TSV file."""
        source, self._source = self.sources[name], name
        entry = self._listed.get(name, {}).get(str(path)) or Listed(path, path.name)
        if entry.problem:
            self.error(entry.problem[0], path, 0, entry.problem[1])
            return
        fmt = file_format(path, source)
        meta = {"source": name, "category": source.category}
        if fmt != "hf":
            try:
                mode, size = (st := path.stat()).st_mode, st.st_size
            except OSError as exc:  # a dangling symlink or a symlink loop
                self.error("unreadable_file", path, 0, f"{type(exc).__name__}: {exc.strerror or exc}")
                return
            if not stat.S_ISREG(mode):  # never opened: a FIFO would block the task, a device never ends
                self.error("special_file", path, 0, f"{_KINDS.get(stat.S_IFMT(mode), 'special file')}, not a "
                           "regular file; not read")
                return
            if size == 0:
                self.error("empty_file", path, 0, "the file is empty")
                return
        reader = {"jsonl": self._jsonl, "parquet": self._parquet, "text": self._text, "pairs": self._pairs,
                  "tsv": self._tsv, "po": self._po, "hf": self._hf}.get(fmt)
        if reader is None:
            self.error("unknown_format", path, 0, "cannot tell the format from the suffix; set `format:`")
            return
        span = (start, end) != (0, None)
        n, errors_before = 0, len(self._errors)
        for line, text in reader(path, source, start, end) if span else reader(path, source):
            if not encodable(text):  # JSON `\ud83d` escapes decode to lone surrogates, which no writer accepts
                self.error("invalid_unicode", path, line, "lone UTF-16 surrogate in the text; record skipped")
                continue
            n += 1
            yield Document(text=text, id=f"{name}/{entry.rel}:{line}", metadata=dict(meta))
        if span:  # whether the whole file gave nothing is known once every range is read: `empty_split_files`
            self._ranges.append({"file": str(path), "source": name, "start": start, "documents": n,
                                 "errors": len(self._errors) - errors_before})
        elif n == 0 and len(self._errors) == errors_before:  # an already reported error explains the emptiness
            self.error("no_documents", path, 0, "no usable record in the file")

    def _lines(self, path: Path, start: int = 0, end: int | None = None) -> Iterator[tuple[int, str]]:
        """Decoded lines (of those starting in [start, end)); invalid UTF-8 lines and a truncated tail are
        reported, never raised. Line numbers count from the start of the file whatever `start` is."""
        number = 0
        try:
            with _open_binary(path) as f:
                position = 0
                if start:
                    position, number = _first_line(f, start)
                while (end is None or position < end) and (raw := f.readline(self.max_record_bytes + 1)):
                    position += len(raw)
                    number += 1
                    if len(raw) > self.max_record_bytes and not raw.endswith(b"\n"):
                        self.error("record_too_large", path, number, f"a line over {self.max_record_bytes:,} bytes")
                        while raw and not raw.endswith(b"\n"):  # skip to the end of that line
                            raw = f.readline(self.max_record_bytes)
                            position += len(raw)
                        continue
                    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 BOM: drop it, keep the record
                        raw = raw[3:]
                    if b"\0" in raw:
                        self.error("nul_bytes", path, number, "NUL bytes removed")
                        raw = raw.replace(b"\0", b"")
                    try:
                        yield number, raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        self.error("invalid_utf8", path, number, f"byte {exc.start}: {exc.reason}; record skipped")
        except CorruptInput as exc:
            self.error("truncated_file", path, number + 1, f"{type(exc).__name__}: {exc}; read up to here")
        except OSError as exc:  # permissions, a symlink loop, a directory where a file was expected
            self.error("unreadable_file", path, number + 1, f"{type(exc).__name__}: {exc.strerror or exc}")

    def _jsonl(self, path: Path, source: SourceConfig, start: int = 0, end: int | None = None
               ) -> Iterator[tuple[int, str]]:
        for number, line in self._lines(path, start, end):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as exc:  # RecursionError: `[[[[…` nested past Python's stack
                self.error("malformed_json", path, number, str(exc)[:120] or "nested too deeply")
                continue
            text = self._record_text(record, source, path, number)
            if text is not None:
                yield number, text

    def _record_text(self, record: object, source: SourceConfig, path: Path, number: int) -> str | None:
        if not isinstance(record, dict):
            self.error("malformed_json", path, number, f"expected an object, got {type(record).__name__}")
            return None
        if record.get("split") == "test":  # held-out evaluation pairs (the sample's): never train on them
            self.stat_update(f"held_out:{self._source}")
            return None
        if source.category == "parallel":
            en, fr = record.get("en"), record.get("fr")
            if not (isinstance(en, str) and isinstance(fr, str) and en.strip() and fr.strip()):
                self.error("missing_field", path, number, "a parallel record needs non-empty `en` and `fr` strings")
                return None
            return render_pair(en.strip(), fr.strip(), self.seed)
        text = record.get(source.text_field)
        if not isinstance(text, str):
            what = "missing" if text is None else f"a {type(text).__name__}, not a string"
            self.error("missing_field", path, number, f"field {source.text_field!r} is {what}")
            return None
        return text

    def _parquet(self, path: Path, source: SourceConfig) -> Iterator[tuple[int, str]]:
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(path)
            columns = ["en", "fr"] if source.category == "parallel" else [source.text_field]
            records = (r for batch in table.iter_batches(columns=columns) for r in batch.to_pylist())
            yield from self._records(records, source, path)
        except Exception as exc:  # pyarrow raises many types for a corrupt or foreign file
            self.error("unreadable_parquet", path, 0, f"{type(exc).__name__}: {str(exc)[:120]}")

    def _hf(self, path: Path, source: SourceConfig) -> Iterator[tuple[int, str]]:
        """A Hugging Face dataset: from disk always; by name from the Hub when online. Test splits are held out."""
        import datasets

        try:
            if path.exists():
                loaded = datasets.load_from_disk(str(path))
            else:
                name, _, subset = source.path.partition(":")
                loaded = datasets.load_dataset(name, subset or None, streaming=True)
        except Exception as exc:  # datasets raises many types (offline, missing, corrupt)
            self.error("unreadable_dataset", path, 0, f"{type(exc).__name__}: {str(exc)[:160]}")
            return
        splits = loaded.items() if hasattr(loaded, "items") else [("train", loaded)]
        for split, rows in splits:  # a test split is counted when its size is known (a streamed one is not read)
            if split == "test" and hasattr(rows, "__len__"):
                self.stat_update(f"held_out:{self._source}", value=len(rows))
        yield from self._records((r for split, rows in splits if split != "test" for r in rows), source, path)

    def _records(self, records: Iterable, source: SourceConfig, path: Path) -> Iterator[tuple[int, str]]:
        """The texts of records numbered from 1 (`_record_text` reports the ones it refuses)."""
        for number, record in enumerate(records, 1):
            if (text := self._record_text(record, source, path, number)) is not None:
                yield number, text

    def _text(self, path: Path, source: SourceConfig) -> Iterator[tuple[int, str]]:
        """A plain text or code file is one document."""
        lines, first = [], None
        for number, line in self._lines(path):
            first = first or number
            lines.append(line)
        if lines:
            yield first, "".join(lines)

    def _pairs(self, path: Path, source: SourceConfig) -> Iterator[tuple[int, str]]:
        fr_path = path.with_suffix(".fr")
        if not fr_path.is_file():
            self.error("missing_pair", path, 0, f"no regular file {fr_path.name} beside it")
            return
        en_lines, fr_lines = dict(self._lines(path)), dict(self._lines(fr_path))
        if len(en_lines) != len(fr_lines):
            self.error("misaligned_pairs", path, 0, f"{len(en_lines)} English lines, {len(fr_lines)} French lines")
        for number in sorted(en_lines.keys() & fr_lines.keys()):
            en, fr = en_lines[number].strip(), fr_lines[number].strip()
            if en and fr:
                yield number, render_pair(en, fr, self.seed)

    def _tsv(self, path: Path, source: SourceConfig, start: int = 0, end: int | None = None
             ) -> Iterator[tuple[int, str]]:
        order = ("en", "fr")
        if start:  # the header is line 1, in the first range: read it again for the column order
            with open(path, "rb") as f:
                order = _tsv_header(f.readline(self.max_record_bytes).decode("utf-8", "replace")) or order
        for number, line in self._lines(path, start, end):
            cells = line.rstrip("\n").split("\t")
            if number == 1 and (header := _tsv_header(line)):
                order = header
                continue
            if not line.strip():
                continue
            if len(cells) != 2:
                self.error("malformed_tsv", path, number, f"expected 2 tab-separated cells, got {len(cells)}")
                continue
            pair = dict(zip(order, (c.strip() for c in cells), strict=True))
            if pair["en"] and pair["fr"]:
                yield number, render_pair(pair["en"], pair["fr"], self.seed)

    def _po(self, path: Path, source: SourceConfig) -> Iterator[tuple[int, str]]:
        """A gettext catalogue: msgid is English, msgstr French; fuzzy, plural and untranslated entries skipped."""
        entry: dict[str, str] = {}
        key, start, fuzzy = None, 0, False

        broken = False  # a syntax error in the entry: it is reported and skipped, never guessed at

        def flush() -> Iterator[tuple[int, str]]:
            en, fr = entry.get("msgid", ""), entry.get("msgstr", "")
            if en and fr and not fuzzy and not broken and "msgid_plural" not in entry:
                yield start, render_pair(en, fr, self.seed)

        def string(quoted: str, number: int) -> str:
            nonlocal broken
            value = _po_string(quoted)
            if value is None:
                broken = True
                self.error("malformed_po", path, number, f"expected a quoted string, got {quoted[:60]!r}")
                return ""
            return value

        for number, line in self._lines(path):
            line = line.strip()
            if not line:
                yield from flush()
                entry, key, fuzzy, broken = {}, None, False, False
            elif line.startswith("#,") and "fuzzy" in line:
                fuzzy = True
            elif line.startswith("#"):
                continue
            elif line.startswith('"'):
                if key is None:
                    broken = True
                    self.error("malformed_po", path, number, "a string outside any msgid/msgstr")
                else:
                    entry[key] += string(line, number)
            else:
                word, _, rest = line.partition(" ")
                if word not in _PO_KEYWORDS and not _PO_PLURAL.fullmatch(word):
                    broken, key = True, None
                    self.error("malformed_po", path, number, f"unknown keyword {word[:40]!r}")
                    continue
                if word == "msgid":
                    start = number
                key = word
                entry[key] = string(rest.strip(), number)
        yield from flush()


def _first_line(f, start: int) -> tuple[int, int]:
    """(offset of the first line starting at or after `start`, newlines before it): every byte before `start` is
    read once, a block at a time, to count the lines: at memory speed, far below the cost of filtering the range."""
    count, left = 0, start - 1  # the line holding byte start - 1 ends at the first newline from there on
    while left > 0 and (block := f.read(min(left, _COUNT_BLOCK))):
        count, left = count + block.count(b"\n"), left - len(block)
    position = start - 1 - left
    while piece := f.readline(1 << 20):
        position += len(piece)
        if piece.endswith(b"\n"):
            return position, count + 1
    return position, count  # no line starts after `start`


def _tsv_header(line: str) -> tuple[str, ...] | None:
    cells = [c.strip().lower() for c in line.rstrip("\n").lstrip("\ufeff").split("\t")]
    return tuple(cells) if set(cells) == {"en", "fr"} and len(cells) == 2 else None


def empty_split_files(ranges_dir: Path) -> Iterator[dict]:
    """`no_documents` errors for the files read in ranges by several tasks that gave no document and no error
    in any range (a one-task read reports them itself); `ranges_dir` holds what each task said of its ranges."""
    files: dict[str, list] = {}
    for path in sorted(Path(ranges_dir).glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for record in map(json.loads, filter(str.strip, f)):
                seen = files.setdefault(record["file"], [record["source"], 0, 0])
                seen[1] += record["documents"]
                seen[2] += record["errors"]
    for file, (source, documents, errors) in sorted(files.items()):
        if documents == 0 and errors == 0:
            yield InputError("no_documents", file, 0, "no usable record in the file", source).__dict__


_PO_KEYWORDS = {"msgid", "msgstr", "msgctxt", "msgid_plural"}
_PO_PLURAL = re.compile(r"msgstr\[\d+\]")


def _po_string(quoted: str) -> str | None:
    """A gettext string literal's value; None when it is not one (unquoted, unterminated)."""
    if len(quoted) < 2 or not (quoted.startswith('"') and quoted.endswith('"')):
        return None
    try:
        value = json.loads(quoted)  # gettext's escapes are a subset of JSON's for the usual \n \t \" \\
    except ValueError:
        return quoted[1:-1]  # an escape JSON does not know (\a, octal): keep the text as written
    return value if isinstance(value, str) else None
