"""`fournil import gguf`: SmolLM2-135M-Instruct (Q4_1 GGUF) becomes a directory transformers and fournil load with
identical logits, tokenised like llama.cpp, continuing greedily like llama.cpp for the first tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from infer_data import llama_cpp_greedy

from fournil.infer.gguf_io import to_gguf_rows, to_hf_rows
from fournil.lm.hf import read_config
from fournil.lm.prompt import PromptTokenizer

llama_cpp = pytest.importorskip("llama_cpp")

TEXTS = ["The capital of France is", "Où est la boulangerie ? J'ai 2 croissants et 12,5 €.",
         "<|im_start|>user\nBonjour !<|im_end|>\n", "def f(x):\n    return x ** 2  # 🥐"]


def test_qk_permutation_round_trips():
    w = np.arange(6 * 4 * 3, dtype=np.float32).reshape(24, 3)
    assert np.array_equal(to_hf_rows(to_gguf_rows(w, 3), 3), w)
    head = to_gguf_rows(w, 3)[:8]  # GGUF row 2i+j of a head = HF row j·D/2 + i
    assert [int(r[0]) // 3 for r in head] == [0, 4, 1, 5, 2, 6, 3, 7]


@pytest.mark.slow
def test_import_writes_a_complete_llama_directory(smol_dir):
    config = read_config(smol_dir)
    assert (config.dim, config.n_layers, config.n_heads, config.kv_heads, config.ffn_dim) == (576, 30, 9, 3, 1536)
    assert config.vocab_size == 49152 and config.tie_embeddings and config.rope_theta == 100000.0
    manifest = json.loads((smol_dir / "fournil.json").read_text())
    assert manifest["complete"] and manifest["gguf_tensor_types"] == ["F32", "Q4_1", "Q8_0"]
    assert "<|im_start|>" in (smol_dir / "chat_template.jinja").read_text()


@pytest.mark.slow
def test_transformers_and_fournil_give_identical_logits(smol_dir, smol_engine):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = AutoTokenizer.from_pretrained(smol_dir)(TEXTS[1], return_tensors="pt").input_ids
    assert ids[0].tolist() == PromptTokenizer.load(smol_dir).encode(TEXTS[1])
    hf = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(smol_engine.model(ids), hf(ids).logits, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_tokenizer_equals_llama_cpp(smol_dir, smol_gguf):
    ll = llama_cpp.Llama(smol_gguf, verbose=False, vocab_only=True)
    tok = PromptTokenizer.load(smol_dir)
    for text in TEXTS:
        assert tok.encode(text) == ll.tokenize(text.encode(), add_bos=False, special=True), text


@pytest.mark.slow
def test_greedy_continuation_matches_llama_cpp_first_tokens(smol_engine, smol_gguf):
    """llama.cpp runs the Q4_1 weights with activations rounded to 8 bits (q8_1 dot products); we run the exactly
    dequantised weights in float32. Logits differ by ~1e-1, so greedy paths agree only until a near-tie: measured
    5 tokens on the first prompt, 8 on the second (13 on code). Both are pinned here."""
    from fournil.lm.sampling import SamplingConfig

    engine = smol_engine
    for text, agree in (("The capital of France is", 5), ("Once upon a time, in a small village", 8)):
        ids = engine.tokenizer.encode(text)
        ours = engine.complete([ids], SamplingConfig(max_tokens=agree, ignore_eos=True))[0].tokens
        assert ours == llama_cpp_greedy(smol_gguf, ids, agree), text
