"""The infer verbs end to end through `fournil.cli.main`: generate, chat (stdin), translate, quantize, export and
import gguf; bad input exits 2 with the file or field named."""

from __future__ import annotations

import io
import json
import shutil

import pytest

from fournil.cli import main


def run(capsys, *argv):
    code = main([*argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_batch_json_equals_stream(tiny_dir, capsys):
    code, out, _ = run(capsys, "generate", str(tiny_dir), "Bonjour", "Hello, my name is", "--max-tokens", "6",
                       "--json", "-q")
    assert code == 0
    results = json.loads(out)
    assert [r["prompt"] for r in results] == ["Bonjour", "Hello, my name is"]
    assert all(len(r["tokens"]) <= 6 and r["finish_reason"] in ("stop", "length") for r in results)
    code, streamed, _ = run(capsys, "generate", str(tiny_dir), "Bonjour", "--max-tokens", "6", "-q")
    assert code == 0 and streamed == results[0]["text"] + "\n"


def test_chat_reads_stdin_with_reset_and_exit(tiny_dir, capsys, monkeypatch):
    from fournil.infer.chat import chat_loop
    from fournil.lm.generate import Engine
    from fournil.lm.sampling import SamplingConfig

    engine = Engine.load(tiny_dir)
    out = io.StringIO()
    history = chat_loop(engine, SamplingConfig(max_tokens=4), io.StringIO("Salut\n/reset\nHello\nAgain\n/exit\nNot read\n"),
                        out)
    assert [m["content"] for m in history if m["role"] == "user"] == ["Hello", "Again"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert "(conversation cleared)" in out.getvalue()
    monkeypatch.setattr("sys.stdin", io.StringIO("Bonjour\n"))
    code, text, _ = run(capsys, "chat", str(tiny_dir), "--max-tokens", "3", "-q")
    assert code == 0 and text.endswith("\n")


def test_translate_one_line_out_per_line_in(tiny_dir, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("sys.stdin", io.StringIO("The bread is warm.\n\nI like cheese.\n"))
    code, out, _ = run(capsys, "translate", str(tiny_dir), "--from", "en", "--to", "fr", "--max-tokens", "5",
                       "--batch-size", "2", "-q")
    assert code == 0 and len(out.splitlines()) == 3 and out.splitlines()[1] == ""
    source = tmp_path / "fr.txt"
    source.write_text("Le pain est chaud.\n", encoding="utf-8")
    code, out, _ = run(capsys, "translate", str(tiny_dir), str(source), "--from", "fr", "--to", "en", "--chat",
                       "--max-tokens", "4", "-q")
    assert code == 0 and len(out.splitlines()) == 1


def test_translate_warns_when_nothing_is_translated(tiny_dir, capsys, monkeypatch):
    """A model that cannot translate must say so, not print blank lines silently."""
    line = "The bread is warm."
    monkeypatch.setattr("sys.stdin", io.StringIO(line + "\n"))
    code, out, _ = run(capsys, "translate", str(tiny_dir), "--from", "en", "--to", "fr", "--max-tokens", "4", "-q")
    greedy = out.strip()
    assert code == 0 and greedy
    # stopping at the greedy text itself leaves an empty translation, deterministically
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{line}\n\n{line}\n"))
    code, out, err = run(capsys, "translate", str(tiny_dir), "--from", "en", "--to", "fr", "--max-tokens", "4",
                         "--stop", greedy, "-q")
    assert code == 0 and out == "\n\n\n"
    err = " ".join(err.split())
    assert "line 1: no translation (empty output)" in err and "line 3: no translation (empty output)" in err
    assert "line 2:" not in err and "2 of 2 lines were not translated" in err


def test_few_shot_prompt_layout():
    from fournil.infer.translate import few_shot_prompt

    prompt = few_shot_prompt("Good morning.", "en", "fr")
    assert prompt.startswith("English: The bakery opens at seven in the morning.\nFrench: La boulangerie")
    assert prompt.endswith("\n\nEnglish: Good morning.\nFrench:")


def test_quantize_report_json(tiny_dir, tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("Le chat dort sur le canapé. The cat sleeps on the sofa. " * 4, encoding="utf-8")
    code, out, _ = run(capsys, "quantize", str(tiny_dir), str(tmp_path / "q8"), "--bits", "8", "--report",
                       "--text", str(text), "--json", "-q")
    result = json.loads(out)
    assert code == 0 and result["tokens"] > 20 and abs(result["change_percent"]) < 5


def test_export_then_import_gguf_cli(tiny_dir, tmp_path, capsys):
    gguf_file = tmp_path / "tiny.gguf"
    assert run(capsys, "export", "gguf", str(tiny_dir), str(gguf_file), "--type", "f16", "-q")[0] == 0
    assert run(capsys, "import", "gguf", str(gguf_file), str(tmp_path / "back"), "-q")[0] == 0
    assert json.loads((tmp_path / "back" / "fournil.json").read_text())["complete"]


@pytest.mark.parametrize("argv, message", [
    (["generate", "{tiny}", "x", "--top-p", "2"], "argument --top-p: must be a finite number in (0, 1]"),
    (["generate", "{tmp}/nope", "x"], "nope"),
    (["import", "gguf", "{tmp}/bad.gguf", "{tmp}/out"], "bad.gguf"),
    (["export", "gguf", "{tiny}", "{tmp}/x.gguf", "--type", "q2_k"], "invalid choice"),
    (["translate", "{tiny}", "--from", "en", "--to", "en"], "--to"),
])
def test_bad_input_exits_2_naming_the_culprit(tiny_dir, tmp_path, capsys, monkeypatch, argv, message):
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n"))
    argv = [a.format(tiny=tiny_dir, tmp=tmp_path) for a in argv]
    try:
        code, _, err = run(capsys, *argv)
    except SystemExit as exc:  # argparse rejects choices and out-of-range numbers itself
        code, err = exc.code, capsys.readouterr().err
    assert code == 2 and message in err.replace("\n", " ")
    assert not (tmp_path / "out" / "fournil.json").exists() and not (tmp_path / "x.gguf").exists()


def test_export_gguf_names_a_broken_tokenizer_config(tiny_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    (model / "tokenizer_config.json").write_text("{not json", encoding="utf-8")
    code, _, err = run(capsys, "export", "gguf", str(model), str(tmp_path / "x.gguf"))
    assert code == 2 and "tokenizer_config.json: not valid JSON" in err.replace("\n", " ")
    assert not (tmp_path / "x.gguf").exists()


def test_a_backend_that_cannot_run_exits_2_naming_the_option(tiny_dir, tmp_path, capsys, monkeypatch):
    from fournil.infer.quantize import quantize
    from fournil.lm import kernels

    int4 = quantize(tiny_dir, tmp_path / "int4", 4)  # the fused step runs all-int8 or all-float32 models only
    code, _, err = run(capsys, "generate", str(int4), "Bonjour", "--max-tokens", "2", "--backend", "fused")
    assert code == 2 and "--backend fused: it runs models whose matrices are all int8 or all float32" in err
    monkeypatch.setattr(kernels, "_available", False)  # a machine where the kernels do not build
    code, _, err = run(capsys, "generate", str(tiny_dir), "Bonjour", "--max-tokens", "2", "--backend", "fused")
    assert code == 2 and "--backend fused: fournil's CPU kernels did not load" in err
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    code, _, err = run(capsys, "generate", str(tiny_dir), "Bonjour", "--max-tokens", "2", "--backend", "inductor")
    assert code == 2 and "--backend inductor: torch.compile needs a C++ compiler" in err


@pytest.mark.parametrize("verb", ["generate", "chat", "translate", "serve", "eval run"])
def test_compile_is_gone_and_names_backend(verb, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*verb.split(), "MODEL", "--compile"])
    assert exit_.value.code == 2 and "--compile is gone: choose how decoding runs with --backend" in \
        capsys.readouterr().err


def test_auto_and_eager_generate_the_same_greedy_text(tiny_dir, capsys):
    outputs = {}
    for backend in ("auto", "eager"):
        code, out, _ = run(capsys, "generate", str(tiny_dir), "Bonjour", "Hello, my name is", "--max-tokens", "8",
                           "--json", "-q", "--backend", backend)
        assert code == 0
        outputs[backend] = [r["tokens"] for r in json.loads(out)]
    assert outputs["auto"] == outputs["eager"]


def test_serve_takes_no_inductor_backend(capsys):
    """Inductor's graphs decode one shared cache length; the server's slots each have their own."""
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "MODEL", "--backend", "inductor"])
    assert exit_.value.code == 2 and "--backend: invalid choice: 'inductor'" in capsys.readouterr().err
