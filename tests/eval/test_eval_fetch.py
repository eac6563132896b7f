"""`fournil eval fetch`: the offline message, and the download path with the hub replaced by the fixtures, read
back by the same code a later offline run uses."""

import json
import shlex

import pytest
from eval_fixtures import DATA

from fournil.cli import main
from fournil.console import FournilError
from fournil.eval.data import read_split
from fournil.eval.fetch import fetch, missing_files
from fournil.eval.runner import fewshot_pool, load_documents
from fournil.eval.tasks import TASKS

# nested fields (fquadv2's answers), a config name (xnli/fr), three tasks of one dataset, string labels
FETCHED = ["french_bench_fquadv2", "french_bench_xnli", "french_bench_grammar", "french_bench_vocab",
           "french_bench_reading_comp", "belebele_fra_Latn", "french_bench_hellaswag"]


def test_offline_lists_missing_files_their_sources_and_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "french_bench_xnli").mkdir()
    (tmp_path / "french_bench_xnli" / "validation.jsonl").write_text("{}\n")  # present: not listed
    with pytest.raises(FournilError) as info:
        fetch([TASKS["french_bench_xnli"], TASKS["french_bench_trivia"]], tmp_path)
    err = str(info.value)
    assert "2 split file(s) missing" in err and "validation.jsonl" not in err
    assert "french_bench_xnli/test.jsonl" in err and "facebook/xnli/fr split 'test'" in err
    assert "french_bench_trivia/train.jsonl" in err and "manu/french-trivia split 'train'" in err
    command = next(line.strip() for line in err.splitlines() if line.strip().startswith("fournil eval fetch"))
    assert shlex.split(command) == ["fournil", "eval", "fetch", "--tasks", "french_bench_xnli,french_bench_trivia",
                                    "--out", str(tmp_path)]
    assert main(["eval", "fetch", "--tasks", "french_bench_trivia", "--out", str(tmp_path)]) == 1


def _fake_hub(calls):
    """`datasets.load_dataset` serving the fixture files of whichever task names that hub dataset."""
    import datasets

    def load_dataset(path, name=None, *, split):
        calls.append((path, name, split))
        folders = {t.dataset for t in TASKS.values() if t.hub == (path, name)}
        assert len(folders) == 1, (path, name)
        file = DATA / folders.pop() / f"{split}.jsonl"
        if not file.is_file():
            raise ValueError(f'Unknown split "{split}"')
        return datasets.Dataset.from_list([json.loads(line) for line in file.read_text().splitlines()])

    return load_dataset


def test_download_writes_the_layout_offline_runs_read(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    calls: list = []
    monkeypatch.setattr(datasets, "load_dataset", _fake_hub(calls))
    tasks = [TASKS[n] for n in FETCHED]
    written = fetch(tasks, tmp_path)
    assert len(calls) == len(set(calls)) == len(written)  # a split shared by several tasks is fetched once
    assert ("facebook/xnli", "fr", "test") in calls and ("manu/fquad2_test", None, "valid") in calls
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == sorted(
        f"{t.dataset}/{s}.jsonl" for t in tasks for s in dict.fromkeys((t.eval_split, t.fewshot_split)) if s)
    assert missing_files(tasks, tmp_path) == []
    for task in tasks:  # what an offline run reads from the snapshot equals what it reads from the originals
        assert load_documents(task, tmp_path, None) == load_documents(task, DATA, None), task.name
        assert fewshot_pool(task, tmp_path) == fewshot_pool(task, DATA), task.name
    assert read_split(tmp_path, "french_bench_fquadv2", "test")[0]["answers"].keys() == {"text", "answer_start"}
    assert fetch(tasks, tmp_path) == [] and len(calls) == len(written)  # complete: nothing downloaded again


def test_a_failed_download_names_it_and_what_is_still_missing(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    calls: list = []
    fake = _fake_hub(calls)

    def flaky(path, name=None, *, split):
        if path == "facebook/xnli":
            raise ConnectionError("Couldn't reach 'facebook/xnli' on the Hub")
        return fake(path, name, split=split)

    monkeypatch.setattr(datasets, "load_dataset", flaky)
    with pytest.raises(FournilError, match="cannot fetch facebook/xnli") as info:
        fetch([TASKS["french_bench_trivia"], TASKS["french_bench_xnli"]], tmp_path)
    message = str(info.value)
    assert (tmp_path / "french_bench_trivia" / "train.jsonl").is_file()  # done before the failure: kept
    assert "french_bench_trivia/train.jsonl" not in message and "french_bench_xnli/test.jsonl" in message
    assert "fournil eval fetch --tasks french_bench_xnli --out" in message
