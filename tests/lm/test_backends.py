"""Which decode backend `choose` gives without being asked (`auto`), and when that builds fournil's kernels: never
for a small model such as the demo's (a bake's eval, a first chat), always when the fused step is asked for by
name, and for a model large enough to win the build's time back."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fournil.lm import fused, kernels
from fournil.lm.config import ModelConfig
from fournil.lm.llama import Llama

# The bake's eval (fournil.eval.engine.Engine, greedy generation) and a chat (fournil.lm.generate.Engine), both
# under --backend auto, on a model directory, with torch's extension cache pointed at an empty folder.
_AUTO = """
import sys
from pathlib import Path
from fournil.eval.engine import Engine
from fournil.lm import kernels
from fournil.lm.generate import Engine as ChatEngine
from fournil.lm.sampling import SamplingConfig

cache = Path(sys.argv[2])
engine = Engine(sys.argv[1], device="cpu")
texts = engine.generate(["Bonjour, je", "The capital of"], until=("\\n",), max_tokens=6, batch_size=1)
chat = ChatEngine.load(sys.argv[1])
chat.complete(["Hello"], SamplingConfig(max_tokens=6, ignore_eos=True))
built = sorted(p.name for p in cache.rglob("*") if p.suffix in (".so", ".o"))
print(engine.backend.name, chat.backend.name, kernels._available, built)
assert (engine.backend.name, chat.backend.name, kernels._available, built) == ("eager", "eager", None, [])
if sys.argv[3] == "fused":  # asked for by name, the fused step builds them; auto then takes them, built
    from fournil.lm.backends import choose
    assert choose(engine.model, "fused").name == "fused" and kernels.built()
    assert any(p.suffix == ".so" for p in cache.rglob("*"))
    assert ChatEngine.load(sys.argv[1]).backend.name == "fused"
"""


def _run_auto(model_dir, cache, then: str) -> None:
    cache.mkdir()
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(cache), "FOURNIL_KERNELS": "1"}
    subprocess.run([sys.executable, "-c", _AUTO, str(model_dir), str(cache), then], check=True, env=env,
                   timeout=600)


def test_auto_decodes_a_small_model_eagerly_without_building_the_kernels(tiny_dir, tmp_path):
    """A bake's eval step (and a first chat with the demo model) must not wait for a compile that would take
    longer than the decoding it speeds up."""
    _run_auto(tiny_dir, tmp_path / "extensions", "stop")


@pytest.mark.slow
def test_the_fused_step_asked_for_by_name_builds_the_kernels(tiny_dir, tmp_path):
    if not kernels.available():  # built in torch's usual cache, as the other kernel tests do
        pytest.skip("fournil's kernels need x86-64 AVX2 and a compiler")
    _run_auto(tiny_dir, tmp_path / "extensions", "fused")


def test_only_a_large_model_pays_for_building_the_kernels():
    def model(**shape) -> Llama:
        with torch.device("meta"):  # sizes only: no memory
            return Llama(ModelConfig(**shape))

    assert not fused.pays_to_build(model(dim=192, n_layers=4, n_heads=4, ffn_dim=512, vocab_size=8000))  # the demo
    assert fused.pays_to_build(model(dim=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dim=1536, vocab_size=49152,
                                     tie_embeddings=True))  # SmolLM2-135M


def test_a_library_is_built_only_when_finished_and_no_build_holds_its_lock(tmp_path, monkeypatch, request):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(kernels, "_available", None)  # not loaded in this process
    kernels._library_paths.cache_clear()  # where the library lies is worked out once per process
    request.addfinalizer(kernels._library_paths.cache_clear)
    assert not kernels.built()
    name = kernels.library_name("fournil_kernels", kernels._sources())
    (tmp_path / name / "lock").touch()
    (tmp_path / name / f"{name}.so").touch()
    assert not kernels.built()  # another process is still writing it
    (tmp_path / name / "lock").unlink()
    assert kernels.built()
