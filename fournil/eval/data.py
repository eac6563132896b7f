"""Task data from local directories laid out like the hub datasets: `DATA/<dataset>/<split>.{jsonl,json,parquet}`.

Records keep the hub datasets' field names, so a snapshot from `fournil eval fetch` and files written by hand
read the same way. Missing files and missing fields are input errors naming the file, the record and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fournil import artifacts
from fournil.console import UsageError

SUFFIXES = (".jsonl", ".json", ".parquet")


def split_file(data_dir: str | Path, dataset: str, split: str) -> Path | None:
    """The file holding `split` of `dataset`, or None."""
    folder = Path(data_dir) / dataset
    for suffix in SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    return None


def expected_path(data_dir: str | Path, dataset: str, split: str) -> Path:
    return Path(data_dir) / dataset / f"{split}.jsonl"


def read_split(data_dir: str | Path, dataset: str, split: str, fields: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Every record of one split; each must carry `fields`."""
    path = split_file(data_dir, dataset, split)
    if path is None:
        raise UsageError(f"missing data file {expected_path(data_dir, dataset, split)} (or .parquet/.json); "
                         "run `fournil eval fetch --out DIR` online, or write it in the hub dataset's schema")
    records = _read(path)
    if not records:
        raise UsageError(f"{path}: no records (an empty task cannot be scored)")
    fields = list(fields)
    for i, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise UsageError(f"{path}: record {i} is {type(record).__name__}, expected an object")
        missing = [f for f in fields if f not in record]
        if missing:
            raise UsageError(f"{path}: record {i} lacks field(s) {', '.join(missing)} "
                             f"(this task needs: {', '.join(fields)})")
    return records


def _read(path: Path) -> list[Any]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise UsageError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from exc
        return pq.read_table(path).to_pylist()
    if path.suffix == ".json":
        data = artifacts.read_json(path)
        return data if isinstance(data, list) else data.get("data", [])
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{n}: not valid JSON: {exc.msg}") from exc
    return records
