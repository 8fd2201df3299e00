"""Lazy package attributes: ``import hrx`` / ``import hrx.runtime`` stay light, and a name is
imported from its module on first use."""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_getattr(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` that imports ``name`` from ``table[name]`` (a module path)."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(importlib.import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
