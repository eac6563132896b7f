"""A reduced demo bake end to end: every artifact exists and opens in the tools users have; a kill resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

RECIPE = """\
name: tiny-bake
description: the demo bake shrunk for a test
corpus:
  sources:
{sources}
tokenizer:
  vocab_size: 600
  weights: {{fr: 1.0, en: 1.0, code: 0.25, parallel: 0.5}}
model: {{dim: 64, n_layers: 2, n_heads: 4, ffn_dim: 192, vocab_size: 600, max_seq_len: 256}}
train: {{lr: 3.0e-3, warmup_steps: 10, steps: 150, seq_len: 64, batch_tokens: 512, micro_batch_size: 8,
        log_interval: 25, eval_interval: 50, checkpoint_interval: 50, eval_tokens: 2048, peak_flops: 1.0e9}}
sft: {{lr: 1.0e-3, warmup_steps: 1, steps: 4, replay: 0.3, seq_len: 128, batch_tokens: 1024, micro_batch_size: 8,
      log_interval: 2, eval_interval: 4, checkpoint_interval: 4, peak_flops: 1.0e9}}
eval: {{limit: 10, max_gen_tokens: 16, chat: true}}
"""


@pytest.fixture(scope="module")
def recipe(sample_sources, tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "tiny-bake.yaml"
    path.write_text(RECIPE.format(sources=sample_sources))
    return path


def bake(recipe: Path, out: Path, *extra: str, kill_when: Path | None = None) -> dict | None:
    command = [sys.executable, "-m", "fournil", "bake", str(recipe), "--out", str(out), "--json", "-q", *extra]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)
    if kill_when is not None:
        deadline = time.time() + 600
        while not kill_when.exists() and child.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(child.pid, signal.SIGKILL)  # the whole group: corpus workers included
        child.wait()
        return None
    stdout, stderr = child.communicate(timeout=900)
    assert child.returncode == 0, stderr[-3000:]
    return json.loads(stdout)


@pytest.fixture(scope="module")
def baked(recipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("bake")
    bake(recipe, out, kill_when=out / ".bake" / "tokenizer.json")  # killed during shards/pretrain
    result = bake(recipe, out)
    return out, result


def test_a_killed_bake_resumes_at_the_first_unfinished_step(baked):
    _, result = baked
    assert result["steps"]["corpus"] == "skipped" and result["steps"]["tokenizer"] == "skipped"
    assert result["steps"]["export"] == "ran"


def test_a_second_bake_skips_everything(baked, recipe):
    out, _ = baked
    assert set(bake(recipe, out)["steps"].values()) == {"skipped"}


def test_the_model_opens_in_transformers_with_its_tokenizer(baked):
    """transformers reads the baked directory as fournil does: the same chat prompt ids, the same logits (measured:
    identical, as both run the same float32 operations)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fournil.lm.hf import load_model
    from fournil.lm.prompt import PromptTokenizer

    out, _ = baked
    model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "model")
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Bonjour !"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    ids = prompt["input_ids"]
    assert ids[0].tolist() == PromptTokenizer.load(out / "model").chat([{"role": "user", "content": "Bonjour !"}])
    with torch.no_grad():
        theirs, ours = model(**prompt).logits, load_model(out / "model").eval()(ids)
    assert theirs.shape[-1] == 600
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_the_gguf_continues_in_llama_cpp_as_fournil_does(baked):
    """llama.cpp runs the q8_0 file with fournil's tokens and next-token choices. Measured on three FR/EN
    prompts: logits within 0.04 of fournil's float model (8-bit weights and activations), the same top token at
    every position, 12 of 12 greedy tokens equal."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import torch

    from fournil.lm.generate import Engine
    from fournil.lm.sampling import SamplingConfig
    from tests.infer.infer_data import llama_cpp_greedy, llama_cpp_logits

    out, _ = baked
    gguf, engine = str(out / "model-q8_0.gguf"), Engine.load(out / "model")
    vocab = llama_cpp.Llama(model_path=gguf, vocab_only=True, verbose=False)
    for text in ("Le chat dort sur le canapé.", "The cat sleeps on the sofa.",
                 "Bonjour, je m'appelle Marie et j'habite à Paris."):
        ids = engine.encode(text)
        assert vocab.tokenize(text.encode(), add_bos=True) == ids
        theirs = llama_cpp_logits(gguf, ids)
        with torch.no_grad():
            ours = engine.model(torch.tensor([ids]))[0].float()
        assert (theirs - ours).abs().max() < 0.2 and (theirs.argmax(-1) == ours.argmax(-1)).all(), text
        greedy = engine.complete([ids], SamplingConfig(max_tokens=8, ignore_eos=True))[0].tokens
        assert llama_cpp_greedy(gguf, ids, 8) == greedy, text


def test_the_report_has_every_section(baked, assert_chart):
    out, _ = baked
    report = (out / "REPORT.md").read_text()
    for heading in ("1. Corpus", "2. Tokenizer", "3. Pretraining", "4. Supervised fine-tuning", "5. Evaluation",
                    "6. Export"):
        assert heading in report
    assert "Language preference" in report and "model-q8_0.gguf" in report
    table = [line.split("|")[1].strip() for line in report.splitlines() if line.startswith("| ")]
    steps = ["corpus", "tokenizer", "shards", "pretrain", "sft", "eval", "export"]
    assert table[:8] == ["step", *steps] and table[8] == "**total**"  # pipeline order, export timed, a total
    assert "**What this model can do:**" in report and "**What it cannot do:**" in report
    assert "Fixture smoke checks" in report and "(n = " in report
    for png in ("pretrain/plots/loss.png", "sft/plots/loss.png", "tokenizer/fertility.png", "eval/languages.png",
                "eval/report.png"):
        assert png in report
        assert_chart(out / png)


def test_the_model_continues_in_the_language_it_is_prompted_in(baked):
    """The bake's own measure (eval/results.json), on 100 held-out pairs: the same continuation costs fewer bits
    after a prompt in its language than after that prompt translated."""
    out, _ = baked
    preference = json.loads((out / "eval" / "results.json").read_text())["language_preference"]
    assert preference["pairs"] == 100
    bits = preference["bits_per_byte"]
    assert bits["fr_after_fr"] < bits["fr_after_en"] and bits["en_after_en"] < bits["en_after_fr"]
    assert preference["fr_prefers_fr_prompt"] >= 0.8 and preference["en_prefers_en_prompt"] >= 0.8
