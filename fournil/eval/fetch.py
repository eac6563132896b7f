"""`fournil eval fetch`: snapshot the tasks' hub datasets into the local layout later runs read offline."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from fournil import artifacts
from fournil.console import FournilError
from fournil.eval.data import expected_path, split_file
from fournil.eval.tasks import Task

log = logging.getLogger(__name__)


def needed_files(tasks: list[Task], data_dir: str | Path) -> list[tuple[Task, str, Path]]:
    """(task, split, path) of every split file a run with few-shot examples would read."""
    out = []
    for task in tasks:
        if task.kind == "translation":
            continue  # any aligned file pair; the embedded sample is the offline default
        for split in dict.fromkeys(s for s in (task.eval_split, task.fewshot_split) if s):
            out.append((task, split, expected_path(data_dir, task.dataset, split)))
    return out


def missing_files(tasks: list[Task], data_dir: str | Path) -> list[tuple[Task, str, Path]]:
    return [(t, s, p) for t, s, p in needed_files(tasks, data_dir) if split_file(data_dir, t.dataset, s) is None]


def offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def fetch_command(tasks: list[Task], data_dir: str | Path) -> str:
    """The command that downloads exactly these tasks' files into `data_dir` (quoted for a shell)."""
    import shlex

    names = ",".join(dict.fromkeys(t.name for t in tasks))
    return f"fournil eval fetch --tasks {names} --out {shlex.quote(str(data_dir))}"


def _missing_message(reason: str, missing: list[tuple[Task, str, Path]], data_dir: str | Path) -> str:
    """What is missing, where each file comes from on the hub, and the command that gets them."""
    lines = [f"  {p}  ← {t.hub[0]}{'/' + t.hub[1] if t.hub[1] else ''} split {s!r}" for t, s, p in missing]
    return (f"{reason}: {len(missing)} split file(s) missing:\n" + "\n".join(lines)
            + "\nget them on a machine with network access:\n  " + fetch_command([t for t, _, _ in missing], data_dir)
            + "\nthen copy that directory here (or write the files by hand in the hub datasets' schemas, "
            "docs/eval.md)")


def fetch(tasks: list[Task], data_dir: str | Path) -> list[Path]:
    """Download every missing split as jsonl; offline, fail with the list of what is missing and from where."""
    missing = missing_files(tasks, data_dir)
    if not missing:
        log.info("all %d split files already in %s", len(needed_files(tasks, data_dir)), data_dir)
        return []
    if offline():
        raise FournilError(_missing_message("offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set)", missing, data_dir))
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise FournilError("fetching needs the `datasets` package (pip install datasets)") from exc
    written = []
    for task, split, path in missing:
        if split_file(data_dir, task.dataset, split):  # another task of the same dataset fetched it
            continue
        hub_id, config = task.hub
        try:
            rows = load_dataset(hub_id, config, split=split)
        except Exception as exc:  # network, auth, renamed split: what failed, and everything still missing
            left = missing_files(tasks, data_dir)
            raise FournilError(_missing_message(f"cannot fetch {hub_id} split {split!r} for {task.name} ({exc})",
                                                left, data_dir)) from exc
        # one JSON object per line, the hub's field names: exactly what `read_split` reads back
        text = "".join(json.dumps(dict(r), ensure_ascii=False, default=str) + "\n" for r in rows)
        artifacts.write_text(path, text)
        log.info("%s: %d records → %s", task.name, len(rows), path)
        written.append(path)
    return written
