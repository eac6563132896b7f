"""Hostile corpus input: every malformed file is read with its bad records counted by reason, or refused with a
message naming file and line; never a traceback, never a silent loss."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from fournil.corpus.config import SourceConfig
from fournil.corpus.readers import SourceReader
from tests.reliability import hostile_corpus
from tests.reliability.conftest import assert_clean_failure, fournil


def sources(root: Path) -> dict[str, SourceConfig]:
    return {"mono": SourceConfig(path=str(root / "mono"), category="fr"),
            "par": SourceConfig(path=str(root / "parallel"), category="parallel"),
            "pairs": SourceConfig(path=str(root / "pairs"), category="parallel", format="pairs")}


@contextlib.contextmanager
def as_nobody() -> Iterator[None]:
    """Root reads a chmod-000 file anyway; drop the effective uid so the permission check is real."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture(scope="module")
def hostile() -> Iterator[tuple[Path, dict[str, set[str]]]]:
    """Outside pytest's private (0700) temp tree, so that `nobody` can reach the files, then fail on locked.jsonl."""
    root = Path(tempfile.mkdtemp(prefix="fournil-hostile-"))
    root.chmod(0o755)
    expected = hostile_corpus.build(root)
    expected.update(hostile_corpus.build_pairs(root / "pairs"))
    yield root, expected
    shutil.rmtree(root, ignore_errors=True)


def read_all(root: Path, max_errors: int = -1) -> tuple[SourceReader, dict[str, int], dict[str, list]]:
    reader = SourceReader(sources(root), str(root / "errors"), max_errors=max_errors)
    reader.max_record_bytes = hostile_corpus.HUGE_LINE_BYTES
    docs: dict[str, int] = defaultdict(int)
    errors: dict[str, list] = defaultdict(list)
    for name, path in reader.files:
        reader._errors = []
        with as_nobody():
            docs[path] += sum(1 for _ in reader.read_file(name, Path(path)))
        errors[path] += reader._errors
    return reader, docs, errors


def test_at_least_twenty_kinds_of_malformed_file(hostile):
    _, expected = hostile
    assert sum(1 for kinds in expected.values() if kinds) >= 20


def test_every_malformed_file_is_reported_by_reason_and_nothing_raises(hostile):
    root, expected = hostile
    reader, _, errors = read_all(root)
    listed = {Path(p).relative_to(root).as_posix() for _, p in reader.files}
    assert len(listed) == len(expected), "a file was skipped without a word (symlinks, directories…)"
    for path, found in errors.items():
        name = Path(path).name
        assert {e.kind for e in found} == expected[name], name
        for err in found:  # every report names the file and a line (0 = the file as a whole)
            assert err.file == path and err.line >= 0 and err.detail
            assert str(err).startswith(f"{path}:{err.line}: {err.kind}: ")


@pytest.mark.parametrize(("name", "documents"), [
    ("bad-utf8.jsonl", 2), ("bad-line.jsonl", 2), ("non-object.jsonl", 1), ("huge-line.jsonl", 2),
    ("bom.jsonl", 2), ("nul.jsonl", 2), ("crlf.jsonl", 2), ("deep.jsonl", 1), ("surrogate.jsonl", 1),
    ("missing-field.jsonl", 1), ("wrong-columns.tsv", 1), ("crlf.tsv", 2), ("broken.po", 1),
    ("pairs.jsonl", 1), ("inner.jsonl", 1), ("short.en", 1),
])
def test_good_records_beside_bad_ones_are_kept(hostile, name, documents):
    root, _ = hostile
    _, docs, _ = read_all(root)
    assert [n for p, n in docs.items() if Path(p).name == name] == [documents]


def test_a_bom_is_not_part_of_the_first_document(hostile):
    root, _ = hostile
    reader = SourceReader(sources(root), str(root / "errors"))
    texts = [d.text for d in reader.read_file("mono", root / "mono" / "bom.jsonl")]
    assert texts == [hostile_corpus.GOOD_FR] * 2


def test_zstd_frames_are_all_read_and_a_cut_stream_is_reported(tmp_path):
    """zstandard's stream_reader returns a short read at a truncated frame; ours reports it."""
    import zstandard

    lines = [json.dumps({"text": f"{hostile_corpus.GOOD_FR} {i}"}).encode() + b"\n" for i in range(400)]
    frames = b"".join(zstandard.ZstdCompressor().compress(b"".join(lines[i:i + 100])) for i in range(0, 400, 100))
    (tmp_path / "frames.jsonl.zst").write_bytes(frames)
    (tmp_path / "cut.jsonl.zst").write_bytes(frames[: len(frames) - 40])
    reader = SourceReader({"s": SourceConfig(path=str(tmp_path), category="fr")}, str(tmp_path / "e"), max_errors=-1)
    assert len(list(reader.read_file("s", tmp_path / "frames.jsonl.zst"))) == 400 and not reader._errors
    kept = len(list(reader.read_file("s", tmp_path / "cut.jsonl.zst")))
    assert kept < 400 and [e.kind for e in reader._errors] == ["truncated_file"]


def test_the_error_budget_stops_with_file_and_line(hostile):
    root, _ = hostile
    from fournil.corpus.readers import ErrorBudgetExceeded

    with pytest.raises(ErrorBudgetExceeded, match=r"more than 3 bad input records \(last: /.+:\d+: \w+: "):
        read_all(root, max_errors=3)


@pytest.mark.slow
def test_corpus_run_cli_counts_every_bad_record_by_reason(hostile, tmp_path):
    """The real `fournil corpus run` over the hostile tree: exit 0, stats.json lists the errors by kind."""
    root, expected = hostile
    recipe = tmp_path / "corpus.yaml"
    recipe.write_text(f"sources:\n  mono: {{path: {root / 'mono'}, category: fr}}\n"
                      f"  par: {{path: {root / 'parallel'}, category: parallel}}\n"
                      f"  pairs: {{path: {root / 'pairs'}, category: parallel, format: pairs}}\n"
                      "min_words: 5\nval_docs: 0\n")
    locked = root / "mono" / "locked.jsonl"
    locked.chmod(0o644)  # the child runs as root and could read it anyway: the permission case is tested above
    try:
        refused = fournil("corpus", "run", str(recipe), "--out", str(tmp_path / "refused"), "--workers", "1", "-q",
                          "--max-errors", "5")
        result = fournil("corpus", "run", str(recipe), "--out", str(tmp_path / "out"), "--workers", "1", "-q",
                         "--max-errors", "1000")
    finally:
        locked.chmod(0)
    assert_clean_failure(refused, "exceed --max-errors 5", "First ones:", code=1)
    assert str(root) in refused.stderr  # file:line of the first bad records
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    kinds = set().union(*expected.values()) - {"unreadable_file"}  # root can read locked.jsonl
    kinds -= {"record_too_large"}  # the CLI keeps the default 16 MB cap; the huge line here is small
    assert kinds <= set(stats["input_errors"]["by_kind"]), stats["input_errors"]["by_kind"]
    assert stats["input_errors"]["by_kind"]["unreadable_file"] == 3  # the two looping symlinks, the dangling one
