"""Lazy public APIs for stage packages: `import fournil.model` must not import torch until a name is used."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_api(package: str, modules: dict[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """`__all__` and a module-level `__getattr__` (PEP 562) for {module: "name name …"} (".mod": relative to
    the package): each public name is imported from its module on first use."""
    api = {name: module for module, names in modules.items() for name in names.split()}

    def __getattr__(name: str) -> Any:
        if name in api:
            return getattr(import_module(api[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return sorted(api), __getattr__
