"""The whole chain on real datatrove executors (2 workers): what it keeps and drops, dedup recall on planted
near-duplicates, the datasheet, deterministic shards, the CLI and its bad-input budget, and kill-and-resume."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import TASKS
from corpus_fixtures import tiny_tokenizer, write_jsonl

from fournil.corpus.pipeline import exact_key, iter_jsonl
from fournil.corpus.shards import Shards


def kept_docs(out: Path) -> dict[str, list[dict]]:
    return {p.name.split(".")[0]: list(iter_jsonl([p])) for p in sorted((out / "docs").glob("*.jsonl.gz"))}


def test_run_writes_a_complete_corpus(corpus_run):
    out, stats = corpus_run
    manifest = json.loads((out / "fournil.json").read_text())
    assert manifest["complete"] and manifest["config"]["sources"]["fr-web"]["licence"] == "GPL-2.0"
    docs = kept_docs(out)
    assert set(docs) == {"fr", "en", "code", "parallel"}
    for category, items in docs.items():
        assert items == sorted(items, key=lambda d: d["id"])
        assert stats["categories"][category]["documents"] == len(items)
    for s in stats["sources"].values():  # every input document is either kept or rejected with a reason
        assert s["input_documents"] == s["documents"] + sum(s["rejects"].values())


def test_near_and_exact_duplicates_are_removed(corpus_run, tree):
    out, stats = corpus_run
    _, planted = tree
    keys = {exact_key(d["text"]) for items in kept_docs(out).values() for d in items}
    originals = planted["fr"][:6] + planted["en"][:6]
    both = [i for i, (o, n) in enumerate(zip(originals, planted["near"], strict=True))
            if exact_key(o["text"]) in keys and exact_key(n) in keys]
    assert both == []  # recall 1.0 on the planted near-duplicates
    survivors = sum(exact_key(o["text"]) in keys or exact_key(n) in keys
                    for o, n in zip(originals, planted["near"], strict=True))
    assert survivors >= 6  # and a copy of most of them survives: dedup, not deletion
    counts = Counter(exact_key(d["text"]) for items in kept_docs(out).values() for d in items)
    assert all(counts[exact_key(t)] <= 1 for t in planted["exact"])  # never an original and its respaced copy
    assert stats["sources"]["fr-web"]["rejects"]["near_duplicate"] >= 5
    # too short for a 5-word shingle, the repeated TSV pair is left to the exact dedup
    assert stats["sources"]["pairs"]["rejects"] == {"exact_duplicate": 1}


def test_near_duplicates_found_when_a_filter_task_keeps_nothing(tmp_path):
    """The MinHash signatures are made in the filter stage and number each task's documents; the dedup stage's
    task r must read filter task r's documents even when a task before it kept none (no file of its own), or the
    near-duplicates of the later tasks are matched to the wrong documents and kept."""
    from corpus_fixtures import EN_GOOD, near_duplicate, sample_records

    from fournil.corpus.pipeline import load_config, run

    fr = [r for r in sample_records("fr", 200) if 1500 < len(r["text"]) < 6000][:6]
    write_jsonl(tmp_path / "src" / "a.jsonl", fr)
    write_jsonl(tmp_path / "src" / "b.jsonl", [{"text": EN_GOOD + f" {i}"} for i in range(4)])  # all lang_en_in_fr
    write_jsonl(tmp_path / "src" / "c.jsonl", [{"text": near_duplicate(r["text"])} for r in fr[:4]])
    recipe = tmp_path / "corpus.yaml"
    recipe.write_text("sources:\n  web: {path: src, category: fr}\n", encoding="utf-8")
    stats = run(load_config(recipe), tmp_path / "out", workers=2, tasks=3)
    assert sorted(p.name for p in (tmp_path / "out" / "work" / "filtered").glob("*.jsonl")) == \
        ["00000.jsonl", "00002.jsonl"]  # task 1 kept nothing
    one_task = run(load_config(recipe), tmp_path / "one", workers=1, tasks=1)
    rejects = stats["sources"]["web"]["rejects"]
    assert rejects["lang_en_in_fr"] == 4 and rejects["near_duplicate"] >= 3
    assert rejects == one_task["sources"]["web"]["rejects"]
    assert (tmp_path / "out" / "docs" / "fr.jsonl.gz").read_bytes() == (tmp_path / "one" / "docs" / "fr.jsonl.gz").read_bytes()


def test_exact_key_ignores_case_spacing_and_punctuation():
    assert exact_key("Le pain, c’est la vie.") == exact_key("le  pain c’est LA vie !")
    assert exact_key("Le pain, c’est la vie.") != exact_key("Le vin, c’est la vie.")


def test_misrouted_and_contaminated_documents_are_rejected(corpus_run, tree):
    out, stats = corpus_run
    _, planted = tree
    assert stats["sources"]["en-web"]["rejects"].get("lang_fr_in_en") == 1
    assert stats["decontamination"]["bench"]["documents_removed"] == 1
    texts = {d["text"] for items in kept_docs(out).values() for d in items}
    assert planted["contaminated"] not in texts
    assert stats["language_confusion"]["en"]["fr"] >= 1
    rejected = list(iter_jsonl(sorted((out / "rejects" / "decontaminate").glob("*.jsonl.gz"))))
    assert [d["metadata"]["filter_reason"] for d in rejected] == ["decontam_bench"]


def test_datasheet(corpus_run, assert_chart):
    from fournil.corpus.report import write_report

    out, _ = corpus_run
    data = write_report(out)
    sheet = (out / "DATASHEET.md").read_text()
    assert "| fr-web | fr | GPL-2.0 |" in sheet and "lang_fr_in_en" in sheet and "bench" in sheet
    assert_chart(out / "datasheet.png")
    assert json.loads((out / "datasheet.json").read_text())["plan"] == data["plan"]


def test_rerun_of_a_complete_corpus_is_a_no_op(corpus_run, tree):
    from fournil.corpus.pipeline import load_config, run

    out, stats = corpus_run
    root, _ = tree
    before = (out / "fournil.json").stat().st_mtime_ns
    assert run(load_config(root / "corpus.yaml"), out, workers=2, tasks=TASKS)["plan"] == stats["plan"]
    assert (out / "fournil.json").stat().st_mtime_ns == before


def test_pack_is_deterministic_and_trainable(corpus_run, tmp_path):
    from fournil.corpus.pack import pack

    out, _ = corpus_run
    texts = [d["text"] for items in kept_docs(out).values() for d in items]
    tok = tiny_tokenizer(tmp_path / "tok", texts)
    a = pack(out, tok, tmp_path / "a", seq_len=64, val_docs=3, tokens_per_shard=20_000)
    pack(out, tok, tmp_path / "b", seq_len=64, val_docs=3, tokens_per_shard=20_000)
    pack(out, tok, tmp_path / "c", seq_len=64, val_docs=3, tokens_per_shard=20_000, seed=7)
    assert len(a["shards"]) > 1
    for shard in a["shards"]:
        assert (tmp_path / "a" / shard["file"]).read_bytes() == (tmp_path / "b" / shard["file"]).read_bytes()
    assert (tmp_path / "a" / "train-00000.bin").read_bytes() != (tmp_path / "c" / "train-00000.bin").read_bytes()
    shards = Shards(tmp_path / "a")
    assert len(shards) > 0 and shards.sample(0).shape == (65,)
    assert shards.languages == ["en", "fr"]
    stream, n_bytes = shards.validation("fr")
    assert a["validation"]["fr"]["documents"] == 3 and n_bytes > 0
    assert int((np.asarray(stream) == a["eos_id"]).sum()) == 3  # EOS after each validation document
    eos_total = sum(int((np.fromfile(tmp_path / "a" / s["file"], dtype=a["dtype"]) == a["eos_id"]).sum())
                    for s in a["shards"])
    assert eos_total == sum(v["documents"] for v in a["categories"].values())


def fournil(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fournil", "corpus", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "300"})


def test_cli_bad_input_budget(tmp_path):
    write_jsonl(tmp_path / "src" / "ok.jsonl", [{"text": "Bonjour tout le monde."}])
    (tmp_path / "src" / "bad.jsonl").write_bytes(b"not json\n" * 4 + b'{"text": "\xff\xfe"}\n')
    (tmp_path / "c.yaml").write_text("sources:\n  s: {path: src, category: fr}\n", encoding="utf-8")
    result = fournil("run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out"), "--workers", "1",
                     "--max-errors", "2")
    assert result.returncode == 1, result.stderr
    assert "bad.jsonl:1: malformed_json" in result.stderr and "exceed --max-errors 2" in result.stderr
    assert "bad.jsonl:5: invalid_utf8" in result.stderr or "(malformed_json: 3)" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_usage_errors(tmp_path):
    (tmp_path / "c.yaml").write_text("sources:\n  s: {path: nowhere, category: fr, wieght: 2}\n", encoding="utf-8")
    result = fournil("run", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "wieght: unknown key; did you mean 'weight'?" in result.stderr
    (tmp_path / "d.yaml").write_text("sources:\n  s: {path: nowhere, category: fr}\n", encoding="utf-8")
    result = fournil("run", str(tmp_path / "d.yaml"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "no files at" in result.stderr
    write_jsonl(tmp_path / "src" / "a.jsonl", [{"text": "Bonjour."}])
    (tmp_path / "e.yaml").write_text("sources:\n  s: {path: src, category: fr}\neval_sets: {fb: gone.jsonl}\n",
                                     encoding="utf-8")
    result = fournil("run", str(tmp_path / "e.yaml"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "eval_sets.fb:" in result.stderr and "does not exist" in result.stderr
    result = fournil("run", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "--sample" in result.stderr


def _gunzip_all(out: Path) -> dict[str, bytes]:
    return {p.name: gzip.decompress(p.read_bytes()) for p in sorted((out / "docs").glob("*.jsonl.gz"))}


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", ["filter", "minhash-buckets"])
def test_kill_and_resume_gives_the_same_corpus(corpus_run, tree, tmp_path, kill_after):
    """SIGKILL the whole process group once a stage has started, rerun, compare with the uninterrupted run."""
    reference, _ = corpus_run
    root, _ = tree
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fournil", "corpus", "run", str(root / "corpus.yaml"), "--out", str(out),
           "--workers", "2", "--tasks", str(TASKS), "-q"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "logs" / kill_after / "completions"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (marker.is_dir() and any(marker.iterdir())):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)  # let every worker of the group die before the rerun writes
    assert not (out / "fournil.json").exists()
    result = fournil("run", str(root / "corpus.yaml"), "--out", str(out), "--workers", "2", "--tasks", str(TASKS))
    assert result.returncode == 0, result.stderr
    assert _gunzip_all(out) == _gunzip_all(reference)
    assert (out / "docs" / "fr.jsonl.gz").read_bytes() == (reference / "docs" / "fr.jsonl.gz").read_bytes()


# ------------------------------------------------------------------------------------ finalise, streaming


def _in_memory_finalise(out: Path) -> dict[str, list[dict]]:
    """docs/ as the in-memory finalise wrote it (every document sorted by id, a set of exact keys): the records the
    streaming one must write, in the same order."""
    from fournil.corpus.runs import read_run

    docs = sorted((json.loads(line) for p in sorted((out / "work" / "dedup").glob("*-docs-*.run"))
                   for _, line in read_run(p)), key=lambda d: d["id"])
    seen, kept = set(), {}
    for doc in docs:
        key = exact_key(doc["text"])
        if key not in seen:
            seen.add(key)
            kept.setdefault(f"{doc['metadata']['category']}.jsonl.gz", []).append(
                {"text": doc["text"], "id": doc["id"], "source": doc["metadata"]["source"],
                 "lang": doc["metadata"].get("lang")})
    return kept


def test_finalise_through_many_small_runs_gives_the_same_corpus(corpus_run, tree, tmp_path, monkeypatch):
    """The dedup stage's runs cut into runs of a few hundred bytes and merged two at a time (several merge
    rounds): docs/ is byte-identical to the run's and to the in-memory finalise, stats.json the same."""
    import shutil

    from fournil.corpus import runs
    from fournil.corpus.pipeline import finalise, load_config

    reference, stats = corpus_run
    root, _ = tree
    out = tmp_path / "out"
    shutil.copytree(reference, out, symlinks=True)
    dedup = out / "work" / "dedup"
    for path in sorted(dedup.glob("*.run")):
        rank, kind, _ = path.name.split("-")
        records = list(runs.read_run(path))
        path.unlink()
        writer = runs.RunWriter(dedup, f"{rank}-{kind}-{path.stem.split('-')[2]}-", max_bytes=300)
        for record in records:
            writer.add(*record)
        writer.close()
    assert len(list(dedup.glob("*-docs-*.run"))) > 20
    monkeypatch.setattr(runs, "FANIN", 2)
    monkeypatch.setattr(runs, "RUN_BYTES", 200)  # the duplicates' runs too
    again = finalise(load_config(root / "corpus.yaml"), out)
    assert _gunzip_all(out) == _gunzip_all(reference)
    for path in (reference / "docs").glob("*.jsonl.gz"):
        assert (out / "docs" / path.name).read_bytes() == path.read_bytes()
    assert {name: [json.loads(line) for line in text.splitlines()] for name, text in _gunzip_all(out).items()} \
        == _in_memory_finalise(reference)
    assert json.dumps(again) == json.dumps({k: v for k, v in stats.items() if k != "seconds"})
    assert not list((out / "work").glob(".finalise.*"))  # the scratch folder is gone


def _synthetic_dedup_output(out: Path, n: int, run_bytes: int) -> None:
    """What the dedup stage leaves for finalise: n French documents (one in 10 an exact copy of another) as runs."""
    import random

    from datatrove.data import Document

    from fournil.corpus.dedup import SortedRuns

    rng = random.Random(n)
    words = [f"mot{i}" for i in range(500)]

    def docs():
        for i in range(n):
            j = i - 7 if i % 10 == 9 else i
            text = " ".join(random.Random(j).choices(words, k=150))
            yield Document(text=text, id=f"s/f.jsonl:{rng.randrange(10**9):09d}{i}",
                           metadata={"source": "s", "category": "fr", "lang": "fr"})

    for rank in range(3):
        list(SortedRuns(str(out / "work" / "dedup"), run_bytes=run_bytes).run(
            (d for k, d in enumerate(docs()) if k % 3 == rank), rank=rank))


def test_finalise_memory_does_not_grow_with_the_corpus(tmp_path, monkeypatch):
    """Peak Python memory of finalise on 4x the documents stays within 25 % (the in-memory finalise held every
    document: 4x). What remains is a record and a read buffer per open run, the counts and the deflate queue."""
    import tracemalloc

    from fournil.corpus import runs
    from fournil.corpus.config import CorpusConfig, SourceConfig
    from fournil.corpus.pipeline import _GzWriter, finalise

    monkeypatch.setattr(runs, "RUN_BYTES", 32 << 10)
    monkeypatch.setattr(runs, "FANIN", 8)  # both sizes merge in rounds: the same number of runs open at once
    monkeypatch.setattr(_GzWriter, "MEMBER", 16 << 10)  # both sizes fill the deflate queue: a fixed set of buffers
    config = CorpusConfig(sources={"s": SourceConfig(path=str(tmp_path), category="fr")})
    peaks = {}
    for n in (1500, 6000):
        out = tmp_path / f"out{n}"
        _synthetic_dedup_output(out, n, run_bytes=32 << 10)
        tracemalloc.start()
        stats = finalise(config, out)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        kept = list(iter_jsonl([out / "docs" / "fr.jsonl.gz"]))
        assert stats["sources"]["s"]["documents"] == len(kept) == n - n // 10
        assert stats["sources"]["s"]["rejects"] == {"exact_duplicate": n // 10}
        assert [d["id"] for d in kept] == sorted(d["id"] for d in kept)
    assert peaks[6000] < 1.25 * peaks[1500], peaks


def test_docs_gzip_is_one_stream_of_members_whatever_the_writes(tmp_path, monkeypatch):
    """finalise's writer deflates members on several threads: the file is still one gzip stream for Python and for
    gzip(1), and its bytes depend on the content only, not on how it was handed over."""
    import random
    import shutil

    from fournil.corpus.pipeline import _GzWriter

    monkeypatch.setattr(_GzWriter, "MEMBER", 1000)
    rng = random.Random(5)
    text = "".join(f"{rng.random()} ligne {i} — café\n" for i in range(3000)).encode()
    outputs = []
    for cut in (1, 7, 999, 1000, 4096, len(text)):
        path = tmp_path / f"{cut}.jsonl.gz"
        with _GzWriter(path) as f:
            for start in range(0, len(text), cut):
                f.write(text[start:start + cut])
        outputs.append(path.read_bytes())
        assert gzip.decompress(outputs[-1]) == text
    assert len(set(outputs)) == 1
    assert outputs[0].count(b"\x1f\x8b\x08") >= len(text) // 1000  # one member per 1000 bytes
    assert shutil.which("gzip"), "gzip(1) is part of every Debian base system"
    assert subprocess.run(["gzip", "-dc", str(tmp_path / "1.jsonl.gz")], capture_output=True, check=True).stdout == text
    with _GzWriter(tmp_path / "empty.gz"):
        pass
    assert gzip.decompress((tmp_path / "empty.gz").read_bytes()) == b""
    assert subprocess.run(["gzip", "-t", str(tmp_path / "empty.gz")]).returncode == 0
