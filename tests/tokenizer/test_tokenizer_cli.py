"""`fournil tokenizer …`: the verbs end to end, exit codes, JSON on stdout."""

from __future__ import annotations

import json

import pytest
from tokenizer_data import DATA, TEXT_SPECS

from fournil.cli import main


def test_train_encode_decode_report(tmp_path, capsys, assert_chart):
    out = tmp_path / "tok"
    code = main(["tokenizer", "train", str(out), "-q", "--text", *TEXT_SPECS, "--weight", "fr=1", "en=1", "code=0.2",
                 "--vocab-size", "800", "--eval", f"fr={DATA / 'fr.txt'}", f"en={DATA / 'en.txt'}", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fertility"][0]["languages"]["fr"]["words"] > 500
    assert (out / "fertility.json").is_file()
    assert_chart(out / "fertility.png")
    assert summary["vocab_size"] == 800 and set(summary["sampled"]) == {"fr", "en", "code"}
    assert (out / "fournil.json").is_file() and (out / "tokenizer.model").is_file()
    manifest = json.loads((out / "fournil.json").read_text())
    assert manifest["config"]["weights"] == {"fr": 1.0, "en": 1.0, "code": 0.2}
    assert len(manifest["inputs"]["fr"][0]["sha256"]) == 64

    assert main(["tokenizer", "encode", str(out), "Le cœur du métier, c’est la patience.", "--bos", "--json"]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert ids[:3] == [1, 560, 380]

    assert main(["tokenizer", "decode", str(out), *map(str, ids), "--skip-special"]) == 0
    assert capsys.readouterr().out == "Le cœur du métier, c’est la patience.\n"

    assert main(["tokenizer", "encode", str(out), "Où ?", "--pieces"]) == 0
    assert capsys.readouterr().out.split() == ["▁", "O", "ù", "▁", "?"]

    png = tmp_path / "fertility.png"
    code = main(["tokenizer", "report", str(out), "--compare", str(out / "tokenizer.model"), "-q",
                 "--text", f"fr={DATA / 'fr.txt'}", f"en={DATA / 'en.txt'}", "--png", str(png), "--json"])
    assert code == 0
    assert_chart(png)
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["languages"]["fr"]["tokens"] == rows[1]["languages"]["fr"]["tokens"]  # HF dir = its .model

    assert main(["tokenizer", "verify", str(out), "-q", "--text", *TEXT_SPECS, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] and result["sentencepiece_differ"] == 0 and result["transformers_differ"] == 0


@pytest.mark.parametrize("argv", [
    ["tokenizer", "train", "OUT", "--text", f"fr={DATA / 'fr.txt'}", f"en={DATA / 'en.txt'}", "--vocab-size", "100"],
    ["tokenizer", "train", "OUT", "--text", "fr=/nonexistent.txt"],
    ["tokenizer", "train", "OUT", "--text", *TEXT_SPECS[:2], "--weight", "fr=lots"],
    ["tokenizer", "encode", "/nonexistent", "x"],
])
def test_bad_usage_exits_2_without_writing(tmp_path, argv, capsys):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses an option's value itself (--weight fr=lots)
        code = exc.code
    assert code == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_lists_the_verbs(capsys):
    with pytest.raises(SystemExit):
        main(["tokenizer", "--help"])
    text = capsys.readouterr().out
    for verb in ("train", "report", "encode", "decode", "verify"):
        assert verb in text
