"""Readers: every format, every kind of bad input counted with file:line (never a traceback, never a silent
loss), the error budget, and parallel pairs rendered in both directions."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fournil.corpus.config import SourceConfig
from fournil.corpus.readers import ErrorBudgetExceeded, SourceReader, render_pair


def read(sources: dict[str, SourceConfig], tmp_path, max_errors: int = 100, max_record_bytes: int | None = None):
    reader = SourceReader(sources, str(tmp_path / "errors"), seed=0, max_errors=max_errors)
    if max_record_bytes:
        reader.max_record_bytes = max_record_bytes
    docs = list(reader.run(rank=0, world_size=1))
    errors = [json.loads(line) for line in (tmp_path / "errors" / "00000.jsonl").read_text().splitlines()]
    return docs, errors


def test_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "un"}\n\n{"text": "deux"}\n', encoding="utf-8")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write('{"content": "trois"}\n')
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "quatre"}\n'))
    pq.write_table(pa.table({"text": ["cinq", "six"]}), tmp_path / "d.parquet")
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "e.txt").write_text("sept\nhuit\n", encoding="utf-8")
    docs, errors = read({
        "a": SourceConfig(path=str(tmp_path / "a.jsonl"), category="fr"),
        "b": SourceConfig(path=str(tmp_path / "b.jsonl.gz"), category="fr", text_field="content"),
        "c": SourceConfig(path=str(tmp_path / "c.jsonl.zst"), category="fr"),
        "d": SourceConfig(path=str(tmp_path / "d.parquet"), category="fr"),
        "e": SourceConfig(path=str(tmp_path / "txt"), category="fr"),
    }, tmp_path)
    assert [d.text for d in docs] == ["un", "deux", "trois", "quatre", "cinq", "six", "sept\nhuit\n"]
    assert docs[1].id == "a/a.jsonl:3" and docs[0].metadata == {"source": "a", "category": "fr"}
    assert errors == []


def test_every_bad_input_is_counted_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok 1"}\n'
                    b'{"text": "caf\xe9 latin-1"}\n'  # 2: invalid UTF-8
                    b'{"text": "broken\n'  # 3: malformed JSON
                    b'{"title": "no text"}\n'  # 4: missing field
                    b'{"text": 42}\n'  # 5: not a string
                    b'{"text": "nul\x00byte"}\n'  # 6: NUL removed, record kept
                    b'[1, 2]\n'  # 7: not an object
                    b'{"text": "' + b"x" * 5000 + b'"}\n'  # 8: a record too large
                    b'{"text": "ok 2"}\n')
    (tmp_path / "empty.jsonl").write_bytes(b"")
    payload = gzip.compress(b"".join(b'{"text": "doc %d"}\n' % i for i in range(200)))
    (tmp_path / "cut.jsonl.gz").write_bytes(payload[: len(payload) // 2])
    docs, errors = read({"s": SourceConfig(path=str(tmp_path), category="en")}, tmp_path, max_record_bytes=1000)
    kinds = {(e["kind"], e["file"].rsplit("/", 1)[-1], e["line"]) for e in errors}
    assert {("invalid_utf8", "bad.jsonl", 2), ("malformed_json", "bad.jsonl", 3), ("missing_field", "bad.jsonl", 4),
            ("missing_field", "bad.jsonl", 5), ("nul_bytes", "bad.jsonl", 6), ("malformed_json", "bad.jsonl", 7),
            ("record_too_large", "bad.jsonl", 8), ("empty_file", "empty.jsonl", 0)} <= kinds
    truncated = [e for e in errors if e["kind"] == "truncated_file"]
    assert len(truncated) == 1 and truncated[0]["file"].endswith("cut.jsonl.gz")
    texts = [d.text for d in docs]
    assert {"ok 1", "ok 2", "nulbyte"} <= set(texts)
    from_cut = [t for t in texts if t.startswith("doc ")]
    assert 0 < len(from_cut) < 200 and from_cut == [f"doc {i}" for i in range(len(from_cut))]  # read up to the cut
    assert truncated[0]["line"] == len(from_cut) + 1


def test_error_budget_stops_the_reader(tmp_path):
    (tmp_path / "x.jsonl").write_text("nope\n" * 10 + '{"text": "fine"}\n', encoding="utf-8")
    reader = SourceReader({"s": SourceConfig(path=str(tmp_path / "x.jsonl"), category="fr")},
                          str(tmp_path / "errors"), max_errors=3)
    with pytest.raises(ErrorBudgetExceeded, match="more than 3 bad input records"):
        list(reader.run(rank=0, world_size=1))
    assert len((tmp_path / "errors" / "00000.jsonl").read_text().splitlines()) == 4  # written even when stopping


def test_parallel_formats_render_both_directions(tmp_path):
    (tmp_path / "p.en").write_text("\n".join(f"Sentence number {i}." for i in range(40)) + "\n", encoding="utf-8")
    (tmp_path / "p.fr").write_text("\n".join(f"Phrase numéro {i}." for i in range(40)) + "\n", encoding="utf-8")
    (tmp_path / "t.tsv").write_text("en\tfr\nOpen\tOuvrir\nbad line\nClose\tFermer\n", encoding="utf-8")
    (tmp_path / "m.po").write_text(
        'msgid ""\nmsgstr "Content-Type: text/plain; charset=UTF-8\\n"\n\n'
        '#: a.c:1\nmsgid "Save the file"\nmsgstr "Enregistrer le fichier"\n\n'
        '#, fuzzy\nmsgid "Quit"\nmsgstr "Quitter"\n\n'
        'msgid "Untranslated"\nmsgstr ""\n\n'
        'msgid "Long "\n"message"\nmsgstr "Message "\n"long"\n', encoding="utf-8")
    (tmp_path / "j.jsonl").write_text('{"en": "Yes", "fr": "Oui"}\n{"en": "Held", "fr": "Tenu", "split": "test"}\n',
                                      encoding="utf-8")
    docs, errors = read({
        "pairs": SourceConfig(path=str(tmp_path / "p"), category="parallel", format="pairs"),
        "tsv": SourceConfig(path=str(tmp_path / "t.tsv"), category="parallel"),
        "po": SourceConfig(path=str(tmp_path / "m.po"), category="parallel"),
        "json": SourceConfig(path=str(tmp_path / "j.jsonl"), category="parallel"),
    }, tmp_path)
    by_source: dict[str, list[str]] = {}
    for d in docs:
        by_source.setdefault(d.metadata["source"], []).append(d.text)
    assert len(by_source["pairs"]) == 40
    firsts = {t.split("]")[0] for t in by_source["pairs"]}
    assert firsts == {"[en", "[fr"}  # both directions occur
    assert "[en] Sentence number 3.\n[fr] Phrase numéro 3." in by_source["pairs"] or \
        "[fr] Phrase numéro 3.\n[en] Sentence number 3." in by_source["pairs"]
    assert len(by_source["tsv"]) == 2 and [e["kind"] for e in errors] == ["malformed_tsv"]
    assert sorted(by_source["po"]) == sorted([render_pair("Save the file", "Enregistrer le fichier", 0),
                                              render_pair("Long message", "Message long", 0)])
    assert by_source["json"] == [render_pair("Yes", "Oui", 0)]  # the test-split pair is held out


def test_pair_order_is_seeded_per_pair():
    a = [render_pair(f"en {i}", f"fr {i}", seed=0) for i in range(200)]
    assert a == [render_pair(f"en {i}", f"fr {i}", seed=0) for i in range(200)]
    assert a != [render_pair(f"en {i}", f"fr {i}", seed=1) for i in range(200)]
    fr_first = sum(t.startswith("[fr]") for t in a)
    assert 70 < fr_first < 130


def test_hugging_face_dataset_from_disk(tmp_path):
    import datasets

    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": ["Bonjour le monde.", "Au revoir."]}),
        "test": datasets.Dataset.from_dict({"text": ["Jamais vu."]}),
    }).save_to_disk(str(tmp_path / "ds"))
    docs, errors = read({"hf": SourceConfig(path=str(tmp_path / "ds"), category="fr", format="hf"),
                         "gone": SourceConfig(path=str(tmp_path / "missing"), category="fr", format="hf")}, tmp_path)
    assert [d.text for d in docs] == ["Bonjour le monde.", "Au revoir."]
    assert [e["kind"] for e in errors] == ["unreadable_dataset"]


# ------------------------------------------------------------------------------------- a file shared by tasks

_LINES = [b'{"text": "bonjour %d"}\n', b"\n", b"not json %d\n", b'{"title": "no text %d"}\n',
          b'{"text": "caf\xe9 %d"}\n', b'{"text": "nul\x00 %d"}\n', b'{"text": "' + b"x" * 90 + b' %d"}\n',
          b'{"text": "test %d", "split": "test"}\n', b'{"text": "crlf %d"}\r\n']
_TSV = [b"en %d\tfr %d\n", b"only one cell %d\n", b"\n", b"a %d\tb %d\tc\n"]


@st.composite
def _split_sources(draw) -> list[tuple[str, bytes]]:
    """A few plain jsonl/TSV files of random good and bad lines (a BOM, a missing last newline, a header, lines
    over the record limit, a file with nothing usable), and a gzip'd one that must stay whole."""
    files = []
    for i in range(draw(st.integers(1, 3))):
        kinds = draw(st.lists(st.integers(0, len(_LINES) - 1), max_size=40))
        data = b"".join(_LINES[k].replace(b"%d", str(n).encode()) for n, k in enumerate(kinds))
        if draw(st.booleans()):
            data = b"\xef\xbb\xbf" + data
        if draw(st.booleans()):
            data = data.rstrip(b"\n")
        files.append((f"part{i}.jsonl", data or b"\n"))
    if draw(st.booleans()):
        rows = draw(st.lists(st.integers(0, len(_TSV) - 1), max_size=30))
        header = b"fr\ten\n" if draw(st.booleans()) else b""
        files.append(("pairs.tsv", header + b"".join(_TSV[k].replace(b"%d", str(n).encode()) for n, k in
                                                      enumerate(rows)) or b"\n"))
    if draw(st.booleans()):
        files.append(("whole.jsonl.gz", gzip.compress(b"".join(_LINES[0].replace(b"%d", b"%d" % n)
                                                               for n in range(draw(st.integers(1, 20)))))))
    return files


def _read_all(tmp_path, files, world_size: int, min_range: int) -> tuple[list, list]:
    from fournil.corpus.pipeline import iter_input_errors

    errors_dir = tmp_path / f"errors-{world_size}"
    sources = {"mono": SourceConfig(path=str(tmp_path / "src"), category="fr", format="auto"),
               "pairs": SourceConfig(path=str(tmp_path / "src" / "pairs.tsv"), category="parallel")}
    if not (tmp_path / "src" / "pairs.tsv").exists():
        del sources["pairs"]
    reader = SourceReader(sources, str(errors_dir), max_errors=-1)
    reader.max_record_bytes, reader.min_range_bytes = 64, min_range
    docs = [d for rank in range(world_size) for d in reader.run(rank=rank, world_size=world_size)]
    errors = sorted((e["kind"], e["file"], e["line"]) for e in iter_input_errors(errors_dir))
    return docs, errors


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=_split_sources(), world_size=st.integers(1, 8), min_range=st.sampled_from([1, 7, 64]))
def test_a_file_shared_by_tasks_reads_every_record_once_with_one_task_ids(tmp_path_factory, files, world_size,
                                                                          min_range):
    """Plain files cut into byte ranges over 1-8 tasks give the documents (ids, texts) and the input errors (kind,
    file, line) of a one-task read: each record once, none lost, line numbers counted from the file's start."""
    tmp_path = tmp_path_factory.mktemp("split")
    (tmp_path / "src").mkdir()
    for name, data in files:
        (tmp_path / "src" / name).write_bytes(data)
    whole_docs, whole_errors = _read_all(tmp_path, files, 1, 1 << 30)
    docs, errors = _read_all(tmp_path, files, world_size, min_range)
    assert sorted((d.id, d.text) for d in docs) == sorted((d.id, d.text) for d in whole_docs)
    assert len({d.id for d in docs}) == len(docs)
    assert errors == whole_errors


def test_a_large_file_is_split_and_compressed_files_are_not(tmp_path):
    big = "".join(json.dumps({"text": f"ligne {i}"}) + "\n" for i in range(1000))
    (tmp_path / "big.jsonl").write_text(big, encoding="utf-8")
    (tmp_path / "small.jsonl").write_text('{"text": "petit"}\n', encoding="utf-8")
    with gzip.open(tmp_path / "big2.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(big * 3)
    reader = SourceReader({"s": SourceConfig(path=str(tmp_path), category="fr")}, str(tmp_path / "e"))
    reader.min_range_bytes = 1000
    units = reader.units(4)
    size = len(big)
    # the share is the total over the tasks: big.jsonl is cut in ranges of about that, the others stay whole
    share = -(-(size + (tmp_path / "big2.jsonl.gz").stat().st_size + 18) // 4)
    assert [u[2:] for u in units if u[1].endswith("big.jsonl")] == \
        [(size * i // -(-size // share), size * (i + 1) // -(-size // share) if i + 1 < -(-size // share) else None)
         for i in range(-(-size // share))]
    assert [u[2:] for u in units if not u[1].endswith("big.jsonl")] == [(0, None), (0, None)]
    assert reader.pieces(1000) == -(-size // 1000) + 2
    docs = [d for rank in range(4) for d in reader.run(rank=rank, world_size=4)]
    assert sorted(d.id for d in docs if "big.jsonl" in d.id) == sorted(f"s/big.jsonl:{i}" for i in range(1, 1001))
