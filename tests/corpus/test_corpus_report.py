"""The datasheet's token columns: counted exactly with --tokenizer, from the index with --shards, and an explicit
note (never zeros) with neither."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from corpus_fixtures import tiny_tokenizer

from fournil.corpus.pipeline import iter_jsonl


def category_rows(sheet: str) -> dict[str, list[str]]:
    section = sheet.split("## Categories")[1].split("## Sources")[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_without_tokenizer_or_shards_the_datasheet_says_what_is_missing(corpus_run):
    from fournil.corpus.report import write_report

    out, _ = corpus_run
    data = write_report(out)
    sheet = (out / "DATASHEET.md").read_text(encoding="utf-8")
    assert "token counts need `--tokenizer DIR`" in sheet and "`--shards DIR`" in sheet
    assert all(row[2] == "—" and row[3] == "—" for row in category_rows(sheet).values())  # not a silent 0
    assert "tokens" not in data and "--tokenizer" in data["tokens_note"]


def test_with_a_tokenizer_tokens_are_counted_exactly(corpus_run, tmp_path):
    from tokenizers import Tokenizer

    from fournil.corpus.report import write_report

    out, _ = corpus_run
    docs = {p.name.split(".")[0]: list(iter_jsonl([p])) for p in sorted((out / "docs").glob("*.jsonl.gz"))}
    tok_dir = tiny_tokenizer(tmp_path / "tok", [d["text"] for items in docs.values() for d in items][::3])
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    expected = {c: sum(len(tok.encode(d["text"], add_special_tokens=False).ids) for d in items)
                for c, items in docs.items()}
    data = write_report(out, tokenizer=tok_dir)
    assert data["tokens"]["categories"] == expected
    assert sum(data["tokens"]["sources"].values()) == sum(expected.values())
    assert "tokens_note" not in data
    sheet = (out / "DATASHEET.md").read_text(encoding="utf-8")
    rows = category_rows(sheet)
    assert {c: int(rows[c][2].replace(",", "")) for c in expected} == expected
    assert rows["fr"][3] == "—" and "mixed tokens need `--shards DIR`" in sheet
    assert json.loads((out / "datasheet.json").read_text(encoding="utf-8"))["tokens"]["categories"] == expected


def test_cli_report_tokenizer(corpus_run, tmp_path):
    out, _ = corpus_run
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "fournil", "corpus", "report", str(out), "--tokenizer"]
    missing = subprocess.run([*command, str(tmp_path / "nope")], capture_output=True, text=True, env=env, timeout=120)
    assert missing.returncode == 2 and "tokenizer.json" in missing.stderr
    tok_dir = tiny_tokenizer(tmp_path / "tok", ["Bonjour le monde.", "Hello world."] * 20)
    done = subprocess.run([*command, str(tok_dir), "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sum(json.loads(done.stdout)["tokens"]["categories"].values()) > 0
