"""`fournil` verbs of the corpus stage (being built: see the issue tracker)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """No verbs yet."""
