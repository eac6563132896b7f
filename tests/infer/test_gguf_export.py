"""`fournil export gguf`: llama.cpp loads the file, reads our tokenizer and template, and computes what we compute.

f32 and f16 continue greedily exactly as our engine does; f32 gives our logits to float rounding; q8_0 and q4_0
give our logits over the file's own (dequantised) weights, llama.cpp rounding activations to 8 bits besides; their
perplexities on a French/English text stay within stated bounds of the float model's."""

from __future__ import annotations

import pytest
import torch
from infer_data import TEXT, llama_cpp_greedy, llama_cpp_logits, perplexity

from fournil.infer.gguf_io import export_gguf, import_gguf
from fournil.lm.hf import load_model
from fournil.lm.prompt import PromptTokenizer
from fournil.lm.sampling import SamplingConfig
from fournil.tokenizer.gguf import read_metadata

llama_cpp = pytest.importorskip("llama_cpp")

PROMPTS = ["La boulangerie du village ouvre à sept heures et", "Once upon a time, in a small village",
           "<|im_start|>user\nQuelle est la capitale de la France ?<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def smol_text(smol_engine):
    """TEXT's ids and SmolLM2's float32 logits over them (our eager forward)."""
    ids = smol_engine.tokenizer.encode(TEXT)
    with torch.no_grad():
        return ids, smol_engine.model(torch.tensor([ids]))[0].float()


def our_logits(directory, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return load_model(directory).eval()(torch.tensor([ids]))[0].float()


@pytest.mark.slow
def test_f16_export_runs_in_llama_cpp_and_matches_our_greedy(smol_dir, smol_engine, tmp_path):
    out = export_gguf(smol_dir, tmp_path / "smol-f16.gguf", "f16")
    meta = read_metadata(out)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["tokenizer.chat_template"] == (smol_dir / "chat_template.jinja").read_text()
    ids = smol_engine.tokenizer.encode("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    ours = smol_engine.complete([ids], SamplingConfig(max_tokens=12, ignore_eos=True))[0].tokens
    assert llama_cpp_greedy(str(out), ids, 12) == ours  # measured: 32 of 32 tokens on 5 prompts


@pytest.mark.slow
def test_f32_export_gives_our_logits_and_greedy_tokens(smol_dir, smol_engine, smol_text, tmp_path):
    """Measured: logits within 0.07 of ours at all 144 positions of TEXT (they span about -27 to 40; llama.cpp keeps
    its KV cache in f16), 16 of 16 greedy tokens equal on each prompt."""
    out = str(export_gguf(smol_dir, tmp_path / "smol-f32.gguf", "f32"))
    ids, ours = smol_text
    torch.testing.assert_close(llama_cpp_logits(out, ids), ours, atol=0.15, rtol=0)
    prompts = [smol_engine.tokenizer.encode(p) for p in PROMPTS]
    for prompt, completion in zip(prompts, smol_engine.complete(prompts, SamplingConfig(max_tokens=16,
                                                                                         ignore_eos=True)),
                                  strict=True):
        assert llama_cpp_greedy(out, prompt, 16) == completion.tokens, smol_engine.tokenizer.decode(prompt)


@pytest.mark.slow
def test_q8_0_export_scores_text_like_the_float_model(smol_dir, smol_text, tmp_path):
    """Measured on TEXT (144 tokens): perplexity 1.3 % above the float model's, the same top token at 90 % of
    positions (8-bit rounding of the weights and of the activations moves the logits by 0.31 on average)."""
    out = str(export_gguf(smol_dir, tmp_path / "smol-q8_0.gguf", "q8_0"))
    ids, ours = smol_text
    theirs = llama_cpp_logits(out, ids)
    assert perplexity(theirs, ids) / perplexity(ours, ids) < 1.03
    assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean() >= 0.85


@pytest.mark.slow
def test_q4_0_export_perplexity_stays_within_a_bound_of_the_float_models(smol_dir, smol_text, tmp_path):
    """Measured: 1.61× on TEXT (SmolLM2's weights are Q4_1 already, requantised here to a coarser grid, the tied
    token embedding included). That the file holds exactly what we meant is test_tiny_round_trip's job."""
    out = str(export_gguf(smol_dir, tmp_path / "smol-q4_0.gguf", "q4_0"))
    ids, ours = smol_text
    assert 1.0 < perplexity(llama_cpp_logits(out, ids), ids) / perplexity(ours, ids) < 1.8


def test_tiny_f32_export_gives_our_logits(tiny_dir, tmp_path):
    """Measured: within 0.003 of ours (logits of σ 0.8; llama.cpp's KV cache is f16)."""
    out = str(export_gguf(tiny_dir, tmp_path / "tiny.gguf", "f32"))
    ids = PromptTokenizer.load(tiny_dir).encode(TEXT)[:64]
    torch.testing.assert_close(llama_cpp_logits(out, ids), our_logits(tiny_dir, ids), atol=0.02, rtol=0)


@pytest.mark.parametrize("qtype, levels", [("q8_0", 127), ("q4_0", 8)])
def test_tiny_round_trip_through_import(tiny_dir, tmp_path, qtype, levels):
    """Export then import: the same architecture back, weights within one quantisation step, and llama.cpp's
    logits on the file equal to ours on the imported weights but for its 8-bit activations (measured: 0.09 at
    most, 0.01 on average, for logits of σ 0.8)."""
    gguf_file = export_gguf(tiny_dir, tmp_path / "tiny.gguf", qtype)
    back = import_gguf(gguf_file, tmp_path / "back")
    a, b = load_model(tiny_dir).state_dict(), load_model(back).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        step = a[key].abs().amax() / levels
        assert (a[key] - b[key]).abs().max() <= step, key
    ids = PromptTokenizer.load(tiny_dir).encode(TEXT)[:64]
    diff = (llama_cpp_logits(str(gguf_file), ids) - our_logits(back, ids)).abs()
    assert diff.max() < 0.25 and diff.mean() < 0.03, (diff.max(), diff.mean())
