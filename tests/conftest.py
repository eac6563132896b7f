"""Test-wide settings: offline hub, deterministic torch, 2 threads (the CI machine has 2 cores)."""

import os
import shutil
import subprocess
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest
import torch

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
