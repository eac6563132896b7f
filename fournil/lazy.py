"""Lazy public APIs for stage packages: `import fournil.model` must not import torch until a name is used."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_getattr(package: str, api: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` that imports each public name from its module on first use (PEP 562)."""

    def __getattr__(name: str) -> Any:
        if name in api:
            return getattr(import_module(api[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
