"""The tiny model directory, built once per session and shared by the eval tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # conftests are imported before pytest puts this folder on the path
from eval_fixtures import build_model_dir


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.mktemp("eval") / "model")


@pytest.fixture(scope="session")
def engine(model_dir):
    from fournil.eval.engine import Engine

    return Engine(model_dir, device="cpu", batch_tokens=2048)
