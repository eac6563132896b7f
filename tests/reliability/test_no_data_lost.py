"""No data silently lost in the corpus stage: every record read is a document (kept or rejected with a reason) or
an input error naming file and line, whatever the source holds — compressed streams cut or followed by junk at
random points, links to folders and files (loops included), FIFOs, sockets and devices, files of the same name in
different folders. What the source holds is worked out here without fournil's reader (`os.walk`, a byte-at-a-time
decoder), and the counts must add up."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fournil.corpus.config import SourceConfig
from fournil.corpus.readers import REPAIRED, SourceReader, _Decompressed
from tests.reliability import hostile_corpus
from tests.reliability.conftest import fournil

SETTINGS = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """A reader that opens a FIFO blocks for ever: fail instead of hanging the suite."""
    def expired(*_):
        raise TimeoutError(f"the reader blocked for {seconds} s (did it open a FIFO or a device?)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def read(path: Path, name: str = "s", world_size: int = 1) -> tuple[list, list]:
    """Every document and input error of one source, through the reader's datatrove entry point, all ranks."""
    reader = SourceReader({name: SourceConfig(path=str(path), category="fr")}, str(path.parent / ".errors"),
                          max_errors=-1)
    docs, errors = [], []
    with deadline(30):
        for rank in range(world_size):
            docs += list(reader.run(rank=rank, world_size=world_size))
            errors += reader._errors
    return docs, errors


def record(i: int) -> bytes:
    return json.dumps({"text": f"{hostile_corpus.GOOD_FR} {i}"}).encode() + b"\n"


BAD_LINES = [b'{"text": "unterminated\n', b"[1, 2]\n", b'{"body": "no text"}\n', b'{"text": "caf\xe9"}\n']


@st.composite
def streams(draw) -> tuple[str, list[bytes], bytes]:
    """A jsonl stream (good and bad records) as gzip or zstd, in several members/frames of several blocks, then cut,
    followed by junk, both, or left whole."""
    codec = draw(st.sampled_from(["gzip", "zstd"]))
    lines = [BAD_LINES[draw(st.integers(0, len(BAD_LINES) - 1))] if draw(st.integers(0, 5)) == 0 else record(i)
             for i in range(draw(st.integers(1, 150)))]
    bounds = sorted(draw(st.lists(st.integers(0, len(lines)), max_size=3)))
    parts = [b"".join(lines[a:b]) for a, b in zip([0, *bounds], [*bounds, len(lines)], strict=True)]
    blob = hostile_corpus.compress(parts, codec, flushes=draw(st.integers(0, 6)), checksum=draw(st.booleans()))
    if codec == "gzip" and draw(st.booleans()):
        blob += b"\0" * draw(st.integers(1, 8))  # zero padding after the last member is allowed
    fault = draw(st.sampled_from(["none", "cut", "junk", "cut+junk"]))
    if "cut" in fault:
        blob = blob[:draw(st.integers(0, len(blob)))]
    if "junk" in fault:
        blob += draw(st.binary(min_size=1, max_size=64))
    return codec, lines, blob


@SETTINGS
@given(stream=streams(), chunk=st.sampled_from([1, 7, 100, 1 << 16]))
def test_a_broken_stream_gives_every_record_before_the_fault_then_one_error_at_its_line(stream, chunk):
    codec, lines, blob = stream
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"part.jsonl.{'gz' if codec == 'gzip' else 'zst'}"
        path.write_bytes(blob)
        if not blob:
            return  # an empty file: `empty_file`, tested elsewhere
        with mock.patch.object(_Decompressed, "CHUNK", chunk):  # small reads: faults in later chunks, replays
            docs, errors = read(path)
    decoded, fault = hostile_corpus.reference_decode(blob, codec)
    texts = {d.id: d.text for d in docs}
    offset = 0
    for number, line in enumerate(lines, 1):  # every good record the decoder can give is a document
        offset += len(line)
        if decoded[:offset] != b"".join(lines[:number]):
            break
        if line not in BAD_LINES:
            assert texts.get(f"s/{path.name}:{number}") == json.loads(line)["text"], number
    truncated = [e for e in errors if e.kind == "truncated_file"]
    if fault:
        assert len(truncated) == 1 and errors[-1] is truncated[0], [str(e) for e in errors]
        assert truncated[0].line == decoded.count(b"\n") + 1, (str(truncated[0]), decoded.count(b"\n"))
    else:
        assert truncated == []
    lost = [e for e in errors if e.kind not in REPAIRED]
    assert len(docs) + len(lost) == hostile_corpus.jsonl_units(decoded, fault), [str(e) for e in errors]


def test_the_reported_case_a_valid_zstd_frame_then_garbage(tmp_path):
    """From the issue: 40 good records then junk gave 0 documents and an error at line 1."""
    import zstandard

    lines = [record(i) for i in range(40)]
    path = tmp_path / "part.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(b"".join(lines)) + b"garbage" * 20)
    docs, errors = read(path)
    assert len(docs) == 40
    assert [(e.kind, e.line) for e in errors] == [("truncated_file", 41)]


NAMES = ["part.jsonl", "data.jsonl", ".hidden.jsonl"]
FOLDERS = ["a", "b", "part", ".git"]


def build_tree(data, tmp: Path) -> Path:
    """A source folder drawn by hypothesis: sub-folders with clashing names, jsonl files with good and bad
    records, links to files and folders (inside, outside, to an ancestor: a loop), dangling links and a link
    loop, a FIFO, a socket, links to /dev/null and /dev/zero."""
    root, outside = tmp / "src", tmp / "outside"
    folders = [root, outside]
    for folder in folders:
        folder.mkdir()
    for _ in range(data.draw(st.integers(0, 5), label="folders")):
        folder = data.draw(st.sampled_from(folders)) / data.draw(st.sampled_from(FOLDERS))
        if not folder.exists():
            folder.mkdir()
            folders.append(folder)
    counter = iter(range(10**6))
    made: list[Path] = []
    kinds = ["jsonl"] * 6 + ["empty", "fifo", "socket", "null", "zero", "dangling", "link-loop", "link-file",
                             "link-folder", "link-ancestor"]
    for _ in range(data.draw(st.integers(1, 12), label="entries")):
        folder = data.draw(st.sampled_from(folders))
        path = folder / data.draw(st.sampled_from(NAMES))
        if os.path.lexists(path):
            continue
        kind = data.draw(st.sampled_from(kinds))
        if kind == "jsonl":
            flags = data.draw(st.lists(st.integers(0, 4), min_size=1, max_size=6))
            path.write_bytes(b"".join(BAD_LINES[0] if f == 0 else b"\n" if f == 1 else record(next(counter))
                                      for f in flags))
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "socket":
            with socket.socket(socket.AF_UNIX) as s:
                s.bind(str(path))
        elif kind in ("null", "zero"):
            os.symlink(f"/dev/{kind}", path)
        elif kind == "dangling":
            os.symlink("nowhere.jsonl", path)
        elif kind == "link-loop":
            os.symlink(path.name, path)
        elif kind == "link-file" and made:
            os.symlink(data.draw(st.sampled_from(made)), path)
        elif kind == "link-folder":
            link = folder / data.draw(st.sampled_from(FOLDERS[:3]))
            if not os.path.lexists(link):
                os.symlink(data.draw(st.sampled_from(folders)), link)
            continue
        elif kind == "link-ancestor" and folder.is_relative_to(root) and not os.path.lexists(folder / "up"):
            up = folder.relative_to(root).parts
            os.symlink("../" * data.draw(st.integers(0, len(up))) or ".", folder / "up")
            continue
        else:
            continue
        made.append(path)
    return root


@settings(SETTINGS, max_examples=100)
@given(data=st.data())
def test_a_source_tree_is_walked_whole_and_every_record_accounted_for(data):
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:  # a short path: sockets' names are limited to 107 bytes
        check_tree(build_tree(data, Path(tmp)))


def check_tree(root: Path) -> None:
    walked = hostile_corpus.walk_source(root)
    docs, errors = read(root)
    expected, units = {}, 0
    for real, rels in walked.files.items():  # the test's own reading of each regular file
        content = Path(real).read_bytes()
        units += hostile_corpus.jsonl_units(content) if content else 1
        for number, line in enumerate(content.splitlines(keepends=True), 1):
            if line not in BAD_LINES and line.strip():
                expected[json.loads(line)["text"]] = {f"s/{rel}:{number}" for rel in rels}
    assert all(n == 1 for n in Counter(d.id for d in docs).values()), "two documents share an id"
    got = Counter(d.text for d in docs)
    assert set(got) == set(expected) and all(n == 1 for n in got.values()), "a record lost, or read twice"
    for doc in docs:
        assert doc.id in expected[doc.text], (doc.id, expected[doc.text])
    by_rank = read(root, world_size=3)[0]  # the same ids whatever the task count
    assert sorted((d.id, d.text) for d in by_rank) == sorted((d.id, d.text) for d in docs)
    files = {kind: sorted(e.file for e in errors if e.kind == kind)
             for kind in ("special_file", "unreadable_file", "symlink_loop")}
    assert len(files["special_file"]) == len(walked.special)
    assert {os.path.realpath(f) for f in files["special_file"]} == set(walked.special)
    assert files["unreadable_file"] == sorted(str(root / r) for r in walked.broken)
    assert files["symlink_loop"] == sorted(str(root / r) for r in walked.loops)
    units += len(walked.special) + len(walked.broken) + len(walked.loops)
    lost = [e for e in errors if e.kind not in REPAIRED]
    assert len(docs) + len(lost) == units, [str(e) for e in errors]


def test_corpus_run_cli_loses_nothing_and_its_counts_add_up(tmp_path):
    """The issue's tree through the real `fournil corpus run`: a linked sub-folder, a FIFO named `.jsonl`, a link
    to a device, same-named files in two folders, a zstd frame followed by junk, a gzip stream cut mid-way."""
    import gzip

    import zstandard

    from fournil.corpus import iter_sample
    from fournil.corpus.pipeline import iter_jsonl

    texts = [r["text"] for r in iter_sample("fr")][:100]
    lines = [json.dumps({"text": t}, ensure_ascii=False).encode() + b"\n" for t in texts]
    root, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    for folder in (root / "a", root / "b", elsewhere):
        folder.mkdir(parents=True)
    (root / "a" / "part.jsonl").write_bytes(b"".join(lines[:20]))
    held = json.dumps({"text": texts[0], "split": "test"}).encode() + b"\n"  # read, never trained on
    (root / "b" / "part.jsonl").write_bytes(b"".join(lines[20:40]) + BAD_LINES[0] + held)
    (elsewhere / "linked.jsonl").write_bytes(b"".join(lines[40:60]))
    os.symlink(elsewhere, root / "linked")
    os.symlink(root, root / "a" / "loop")
    os.mkfifo(root / "fifo.jsonl")
    os.symlink("/dev/null", root / "null.jsonl")
    (root / "junk.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b"".join(lines[60:80])) + b"junk" * 9)
    cut = gzip.compress(b"".join(lines[80:100]))
    (root / "cut.jsonl.gz").write_bytes(cut[: len(cut) // 2])
    walked = hostile_corpus.walk_source(root)
    units, good = 0, {}
    for real, rels in walked.files.items():
        blob = Path(real).read_bytes()
        codec = {".gz": "gzip", ".zst": "zstd"}.get(Path(real).suffix)
        decoded, fault = hostile_corpus.reference_decode(blob, codec) if codec else (blob, False)
        units += hostile_corpus.jsonl_units(decoded, fault)
        for number, line in enumerate(decoded.split(b"\n")[:-1], 1):
            if line + b"\n" in lines:
                good[f"s/{rels[0]}:{number}"] = json.loads(line)["text"]
    units += len(walked.special) + len(walked.broken) + len(walked.loops)
    assert len(good) >= 60 + 20  # the two part.jsonl, the linked folder, the zstd frame, some of the gzip
    recipe = tmp_path / "corpus.yaml"
    recipe.write_text(f"sources:\n  s: {{path: {root}, category: fr}}\nval_docs: 0\n", encoding="utf-8")
    result = fournil("corpus", "run", str(recipe), "--out", str(tmp_path / "out"), "--workers", "1", "--tasks", "3",
                     "--max-errors", "-1", "-q", timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "out"
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    s = stats["sources"]["s"]
    assert s["held_out"] == 1 and s["repaired"] == 0
    assert s["documents"] + sum(s["rejects"].values()) + s["input_errors"] + s["held_out"] == units, s
    assert s["input_documents"] == len(good)  # nothing but the good records became documents
    ids = Counter(d["id"] for d in iter_jsonl(sorted([*(out / "docs").glob("*.jsonl.gz"),
                                                       *(out / "rejects").rglob("*.jsonl.gz")])))
    assert set(ids) == set(good) and all(n == 1 for n in ids.values())
    by_kind = stats["input_errors"]["by_kind"]
    assert by_kind["special_file"] == 2 and by_kind["symlink_loop"] == 1 and by_kind["truncated_file"] == 2
    assert by_kind["malformed_json"] == 1
    first = {(Path(e["file"]).name, e["kind"], e["line"]) for e in stats["input_errors"]["first"]}
    assert ("junk.jsonl.zst", "truncated_file", 21) in first and ("fifo.jsonl", "special_file", 0) in first
    sheet = (out / "DATASHEET.md").read_text(encoding="utf-8")
    assert f"| {s['input_errors']} |" in sheet.split("## Sources")[1].split("##")[0]
