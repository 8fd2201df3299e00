"""HRX: HARMONIC-RX restoration / super-resolution, from training to fast deployment.

Public API (imported lazily, so ``import hrx`` and ``hrx --help`` stay light)::

    hrx.create_model(arch, scale=4, in_channels=3, **overrides)
    hrx.save_model(model, path) / hrx.load_model(path_or_bundled_name)
    hrx.fuse(model)
    hrx.list_models()
"""
from __future__ import annotations

from hrx.lazy import lazy_getattr

__version__ = "0.1.0"

_LAZY = {
    "create_model": "hrx.registry",
    "list_models": "hrx.registry",
    "save_model": "hrx.checkpoint",
    "load_model": "hrx.checkpoint",
    "fuse": "hrx.fusion",
    "HRXError": "hrx.errors",
}

__all__ = ["__version__", *_LAZY]


__getattr__ = lazy_getattr('hrx', _LAZY)
