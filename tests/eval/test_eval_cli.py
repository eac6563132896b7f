"""`fournil eval run/report/fetch/list` on the tiny model and the fixtures: files, resume, golden numbers."""

import json
import shutil

import pytest
from eval_fixtures import DATA

from fournil.cli import main

TASKS = "french_bench_grammar,french_bench_opus_perplexity,translation_en_fr,belebele_fra_Latn"


@pytest.fixture(scope="module")
def results(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("results") / "tiny"
    assert main(["eval", "run", str(model_dir), "--tasks", TASKS, "--data", str(DATA), "--out", str(out),
                 "--max-gen-tokens", "8", "--device", "cpu", "-q"]) == 0
    return out


def test_run_writes_one_json_per_task_samples_and_a_manifest_last(results):
    manifest = json.loads((results / "fournil.json").read_text())
    assert manifest["complete"] and manifest["producer"] == "fournil.eval"
    assert manifest["tasks"] == TASKS.split(",")
    for task in TASKS.split(","):
        data = json.loads((results / f"{task}.json").read_text())
        rows = (results / "samples" / f"{task}.jsonl").read_text().splitlines()
        assert data["task"] == task and len(rows) == data["n"]


def test_golden_scores_of_the_tiny_model(results):
    """Pinned numbers (they match lm-eval's on the same files: test_eval_lmeval.py)."""
    read = lambda t: json.loads((results / f"{t}.json").read_text())  # noqa: E731
    assert read("french_bench_grammar")["metrics"] == {"acc": pytest.approx(1 / 6)}
    assert read("belebele_fra_Latn")["metrics"] == {"acc": pytest.approx(0.2), "acc_norm": pytest.approx(0.2)}
    ppl = read("french_bench_opus_perplexity")["metrics"]
    assert ppl["bits_per_byte"] == pytest.approx(6.188794, rel=1e-5)
    assert ppl["byte_perplexity"] == pytest.approx(72.94787, rel=1e-5)
    translation = read("translation_en_fr")
    assert translation["num_fewshot"] == 5 and translation["n"] == 4  # 5 shots from the dev files
    assert translation["signature"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")


def test_a_killed_run_resumes_from_its_samples(results, model_dir, tmp_path, capsys):
    out = tmp_path / "resumed"
    shutil.copytree(results, out)
    (out / "fournil.json").unlink()
    (out / "french_bench_grammar.json").unlink()
    samples = out / "samples" / "french_bench_grammar.jsonl"
    lines = samples.read_text().splitlines(keepends=True)
    samples.write_text("".join(lines[:2]) + lines[2][:25])  # two documents done, the third torn mid-write
    capsys.readouterr()
    assert main(["eval", "run", str(model_dir), "--tasks", TASKS, "--data", str(DATA), "--out", str(out),
                 "--max-gen-tokens", "8", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "resuming, 2 of 6 documents already scored" in err
    assert "french_bench_opus_perplexity: already done" in err
    assert samples.read_text().splitlines()[:2] == [line.rstrip("\n") for line in lines[:2]]
    assert len(samples.read_text().splitlines()) == 6
    again = json.loads((out / "french_bench_grammar.json").read_text())
    assert again["metrics"] == json.loads((results / "french_bench_grammar.json").read_text())["metrics"]
    assert (out / "fournil.json").is_file()


def test_report_compares_runs_side_by_side_with_parity(results, tmp_path, capsys, assert_chart):
    other = tmp_path / "checkpoint"
    shutil.copytree(results, other)
    data = json.loads((other / "french_bench_grammar.json").read_text())
    data["metrics"]["acc"] = 0.5
    (other / "french_bench_grammar.json").write_text(json.dumps(data))
    assert main(["eval", "report", str(results), str(other), "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "REPORT.md").read_text()
    assert "| task | metric | tiny | checkpoint |" in md
    assert "| french_bench_grammar | acc | 16.7 | 50.0 |" in md
    assert "| tiny | 18.3 | – | – |" in md  # FR mean of grammar 16.7 and belebele 20; no English task
    assert "FR / EN parity" in md and "nrefs:1|case:mixed" in md
    assert_chart(tmp_path / "report" / "report.png")
    assert "| checkpoint | 35.0 |" in capsys.readouterr().out  # FR mean of grammar 50 and belebele 20


def test_fetch_offline_lists_every_missing_file(tmp_path, capsys):
    assert main(["eval", "fetch", "--tasks", "french_bench_xnli,french_bench_trivia", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.replace("\n", "")
    assert "3 split file(s) missing" in err
    assert "french_bench_xnli/test.jsonl" in err and "facebook/xnli/fr" in err and "manu/french-trivia" in err


def test_list_and_bad_flags(capsys):
    assert main(["eval", "list", "--json", "--data", str(DATA)]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert all(all(t["splits"].values()) for t in listing["tasks"] if t["kind"] != "translation")
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "run", "x", "--tasks", "french_bench_mc", "--out", "y", "--limit", "0"])
    assert exit_.value.code == 2 and "argument --limit" in capsys.readouterr().err
    assert main(["eval", "run", "x", "--tasks", "nope", "--out", "y"]) == 2
