"""HRX: HARMONIC-RX restoration / super-resolution, from training to fast deployment.

Public API (imported lazily, so ``import hrx`` and ``hrx --help`` stay light)::

    hrx.create_model(arch, scale=4, in_channels=3, **overrides)
    hrx.save_model(model, path) / hrx.load_model(path_or_bundled_name)
    hrx.fuse(model)
    hrx.list_models()
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "create_model": "hrx.registry",
    "list_models": "hrx.registry",
    "save_model": "hrx.checkpoint",
    "load_model": "hrx.checkpoint",
    "fuse": "hrx.deploy",
    "HRXError": "hrx.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hrx' has no attribute {name!r}")
