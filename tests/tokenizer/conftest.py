"""One small tokenizer trained on the fixtures in data/ (FR, EN, code written for these tests), shared by the tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # conftests are imported before pytest puts this folder on the path
from tokenizer_data import TEXT_SPECS, fixture_config


@pytest.fixture(scope="session")
def trained():
    from fournil.tokenizer.train import parse_inputs, train

    tok, stats = train(fixture_config(), parse_inputs(TEXT_SPECS))
    return tok, stats


@pytest.fixture(scope="session")
def tok(trained):
    return trained[0]


@pytest.fixture(scope="session")
def tok_dir(tok, tmp_path_factory):
    from fournil.tokenizer.export import save

    return save(tok, tmp_path_factory.mktemp("tok") / "tokenizer", manifest={"test": True})
