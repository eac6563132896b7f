"""Sorted runs on disk: whatever the run size and merge fan-in, the merge is the stable sort of what was added."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fournil.corpus.runs import RunWriter, merge, read_run, write_run


@settings(max_examples=80, deadline=None)
@given(writers=st.lists(st.lists(st.tuples(st.binary(max_size=6), st.binary(max_size=20)), max_size=60), max_size=5),
       run_bytes=st.integers(1, 600), fanin=st.integers(2, 5))
def test_merge_of_runs_is_the_stable_sort(writers, run_bytes, fanin):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = []
        for i, records in enumerate(writers):  # like the dedup stage: one writer per task, each its own runs
            writer = RunWriter(tmp, f"{i:05d}-", max_bytes=run_bytes)
            for key, payload in records:
                writer.add(key, payload)
            paths += writer.close()
        (tmp / "scratch").mkdir()
        merged = list(merge(sorted(paths), tmp / "scratch", fanin=fanin))
        expected = sorted((r for records in writers for r in records), key=lambda r: r[0])
        assert merged == expected
        assert list((tmp / "scratch").glob("*")) == [] or len(paths) > fanin  # rounds only when needed


def test_a_cut_run_is_an_error_not_a_short_read(tmp_path):
    write_run(tmp_path / "a.run", [(b"k", b"payload")])
    data = (tmp_path / "a.run").read_bytes()
    (tmp_path / "a.run").write_bytes(data[:-3])
    with pytest.raises(ValueError, match="cut in the middle"):
        list(read_run(tmp_path / "a.run"))
