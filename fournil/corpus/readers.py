"""Reading sources into datatrove Documents, robust to bad input.

Every source file is read record by record; a bad record (invalid UTF-8, malformed JSON, missing text field, a
truncated gzip, an empty file, a record too large…) becomes an `InputError` with file and line, is counted and
written to `errors/`, and the run goes on until the `--max-errors` budget is spent. Nothing is dropped silently.

Parallel pairs (jsonl with `en`/`fr` fields, `x.en`+`x.fr` line-aligned files, TSV, gettext `.po`) are rendered as
one training document per pair, its direction (EN→FR or FR→EN) drawn per pair from the seed, as CroissantLLM did.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep

from fournil.console import FournilError
from fournil.corpus.config import SourceConfig
from fournil.corpus.text import encodable

MAX_RECORD_BYTES = 16 << 20  # a single record above this is refused (a 100 MB line is a dump, not a document)
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

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.detail}"


class ErrorBudgetExceeded(FournilError):
    """More bad records than `--max-errors` allows."""


def source_files(source: SourceConfig) -> list[Path]:
    """The files of a source in a stable order (for `pairs`: the `.en` side of each pair)."""
    path = Path(source.path).expanduser()
    if source.format == "hf":  # one dataset, read by one task (datasets does its own sharding on the Hub side)
        return [path]
    if source.format == "pairs":
        stems = [path] if Path(f"{path}.en").is_file() else sorted(p.with_suffix("") for p in path.rglob("*.en"))
        return [Path(f"{s}.en") for s in stems]
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if _listed(p) and not p.name.startswith("."))
    return sorted(p for p in path.parent.glob(path.name) if _listed(p))


def _listed(path: Path) -> bool:
    """Regular files, and symlinks that lead nowhere (dangling, loops): those are reported, never skipped silently."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def file_format(path: Path, source: SourceConfig) -> str:
    if source.format != "auto":
        return source.format
    suffixes = [s for s in path.suffixes if s not in (".gz", ".zst")]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in _SUFFIX_FORMAT:
        return _SUFFIX_FORMAT[suffix]
    return "text" if source.category == "code" or suffix in _CODE_SUFFIXES or not suffix else "unknown"


def _open_binary(path: Path) -> io.BufferedIOBase:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.name.endswith(".zst"):
        return io.BufferedReader(_ZstdFile(path))
    return open(path, "rb")


class CorruptInput(Exception):
    """A compressed stream that is not what its suffix says, or ends before its end-of-stream marker."""


class _ZstdFile(io.RawIOBase):
    """A zstd file, frame after frame; unlike zstandard's stream_reader, a truncated last frame is an error."""

    def __init__(self, path: Path):
        import zstandard

        self._raw = open(path, "rb")  # noqa: SIM115 (closed by close())
        self._context, self._error = zstandard.ZstdDecompressor(), zstandard.ZstdError
        self._frame, self._pending, self._buffer = self._context.decompressobj(), False, b""

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while not self._buffer:
            chunk = self._raw.read(1 << 16)
            if not chunk:
                if self._pending:
                    raise CorruptInput("the zstd stream ends in the middle of a frame (truncated file)")
                return 0
            self._buffer = self._feed(chunk)
        n = min(len(target), len(self._buffer))
        target[:n], self._buffer = self._buffer[:n], self._buffer[n:]
        return n

    def _feed(self, chunk: bytes) -> bytes:
        out = []
        try:
            while chunk:
                if self._frame.eof:  # concatenated frames are one stream
                    self._frame = self._context.decompressobj()
                out.append(self._frame.decompress(chunk))
                self._pending = not self._frame.eof
                chunk = self._frame.unused_data if self._frame.eof else b""
        except self._error as exc:
            raise CorruptInput(f"not a valid zstd stream: {exc}") from exc
        return b"".join(out)

    def close(self) -> None:
        self._raw.close()
        super().close()


_TRUNCATED = (EOFError, gzip.BadGzipFile, zlib.error, CorruptInput)


def pair_direction(seed: int, en: str, fr: str) -> bool:
    """True when this pair is rendered French first; a hash, so the same pair always gets the same order."""
    return hashlib.blake2b(f"{seed}\0{en}\0{fr}".encode(), digest_size=1).digest()[0] & 1 == 1


def render_pair(en: str, fr: str, seed: int) -> str:
    if pair_direction(seed, en, fr):
        return PAIR_TEMPLATE.format(a="fr", ta=fr, b="en", tb=en)
    return PAIR_TEMPLATE.format(a="en", ta=en, b="fr", tb=fr)


class SourceReader(PipelineStep):
    """Read every source of the recipe; task `rank` reads files rank, rank + world_size, …"""

    type = "📖 - READER"
    name = "fournil sources"
    max_record_bytes = MAX_RECORD_BYTES

    def __init__(self, sources: dict[str, SourceConfig], errors_dir: str, seed: int = 0, max_errors: int = 100):
        super().__init__()
        self.sources, self.errors_dir, self.seed, self.max_errors = sources, errors_dir, seed, max_errors
        self.files = [(name, str(path)) for name, source in sorted(sources.items()) for path in source_files(source)]
        self._errors: list[InputError] = []

    def run(self, data: DocumentsPipeline = None, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        if data:
            yield from data
        self._errors = []
        try:
            for name, path in self.files[rank::world_size]:
                for doc in self.read_file(name, Path(path)):
                    self.stat_update("documents")
                    yield doc
        finally:
            out = Path(self.errors_dir) / f"{rank:05d}.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            with open(out, "w", encoding="utf-8") as f:
                for err in self._errors:
                    f.write(json.dumps(err.__dict__, ensure_ascii=False) + "\n")

    def error(self, kind: str, file: Path, line: int, detail: str) -> None:
        self._errors.append(InputError(kind, str(file), line, detail))
        self.stat_update(f"input_error_{kind}")
        if 0 <= self.max_errors < len(self._errors):
            raise ErrorBudgetExceeded(f"more than {self.max_errors} bad input records (last: {self._errors[-1]})")

    def read_file(self, name: str, path: Path) -> Iterator[Document]:
        source = self.sources[name]
        fmt = file_format(path, source)
        meta = {"source": name, "category": source.category}
        try:
            empty = fmt != "hf" and path.stat().st_size == 0
        except OSError as exc:  # a dangling symlink or a symlink loop
            self.error("unreadable_file", path, 0, f"{type(exc).__name__}: {exc.strerror or exc}")
            return
        if empty:
            self.error("empty_file", path, 0, "the file is empty")
            return
        reader = {"jsonl": self._jsonl, "parquet": self._parquet, "text": self._text, "pairs": self._pairs,
                  "tsv": self._tsv, "po": self._po, "hf": self._hf}.get(fmt)
        if reader is None:
            self.error("unknown_format", path, 0, "cannot tell the format from the suffix; set `format:`")
            return
        n, errors_before = 0, len(self._errors)
        for line, text in reader(path, source):
            if not encodable(text):  # JSON `\ud83d` escapes decode to lone surrogates, which no writer accepts
                self.error("invalid_unicode", path, line, "lone UTF-16 surrogate in the text; record skipped")
                continue
            n += 1
            yield Document(text=text, id=f"{name}/{path.name}:{line}", metadata=dict(meta))
        if n == 0 and len(self._errors) == errors_before:  # an already reported error explains the emptiness
            self.error("no_documents", path, 0, "no usable record in the file")

    def _lines(self, path: Path) -> Iterator[tuple[int, str]]:
        """Decoded lines; invalid UTF-8 lines and a truncated tail are reported, never raised."""
        number = 0
        try:
            with _open_binary(path) as f:
                while raw := f.readline(self.max_record_bytes + 1):
                    number += 1
                    if len(raw) > self.max_record_bytes and not raw.endswith(b"\n"):
                        self.error("record_too_large", path, number, f"a line over {self.max_record_bytes:,} bytes")
                        while raw and not raw.endswith(b"\n"):  # skip to the end of that line
                            raw = f.readline(self.max_record_bytes)
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
        except _TRUNCATED as exc:
            self.error("truncated_file", path, number + 1, f"{type(exc).__name__}: {exc}; read up to here")
        except OSError as exc:  # permissions, a symlink loop, a directory where a file was expected
            self.error("unreadable_file", path, number + 1, f"{type(exc).__name__}: {exc.strerror or exc}")

    def _jsonl(self, path: Path, source: SourceConfig) -> Iterator[tuple[int, str]]:
        for number, line in self._lines(path):
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
            self.stat_update("held_out_test")
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
            number = 0
            for batch in table.iter_batches(columns=columns):
                for record in batch.to_pylist():
                    number += 1
                    text = self._record_text(record, source, path, number)
                    if text is not None:
                        yield number, text
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
        number = 0
        for split, rows in splits:
            if split == "test":
                self.stat_update("held_out_test")
                continue
            for record in rows:
                number += 1
                text = self._record_text(record, source, path, number)
                if text is not None:
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
            self.error("missing_pair", path, 0, f"no {fr_path.name} beside it")
            return
        en_lines, fr_lines = dict(self._lines(path)), dict(self._lines(fr_path))
        if len(en_lines) != len(fr_lines):
            self.error("misaligned_pairs", path, 0, f"{len(en_lines)} English lines, {len(fr_lines)} French lines")
        for number in sorted(en_lines.keys() & fr_lines.keys()):
            en, fr = en_lines[number].strip(), fr_lines[number].strip()
            if en and fr:
                yield number, render_pair(en, fr, self.seed)

    def _tsv(self, path: Path, source: SourceConfig) -> Iterator[tuple[int, str]]:
        order = ("en", "fr")
        for number, line in self._lines(path):
            cells = line.rstrip("\n").split("\t")
            if number == 1 and {c.strip().lower() for c in cells} == {"en", "fr"}:
                order = tuple(c.strip().lower() for c in cells)
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
