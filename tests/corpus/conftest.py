"""One real corpus run (datatrove executors, 2 workers) over the fixture tree, shared by the pipeline tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # conftests are imported before pytest puts this folder on the path
from corpus_fixtures import build_tree

TASKS = 6


@pytest.fixture(scope="session")
def tree(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sources")
    return root, build_tree(root)


@pytest.fixture(scope="session")
def corpus_run(tree, tmp_path_factory) -> tuple[Path, dict]:
    from fournil.corpus.pipeline import load_config, run

    root, _ = tree
    out = tmp_path_factory.mktemp("corpus") / "out"
    stats = run(load_config(root / "corpus.yaml"), out, workers=2, tasks=TASKS)
    return out, stats
