"""Test-wide settings: offline hub, deterministic torch, 2 threads (the CI machine has 2 cores)."""

import os

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
