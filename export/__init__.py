"""ONNX export: fuse, freeze to static shapes, export, check, simplify; and verification.

``export_onnx`` is imported lazily so ``import hrx.export`` stays light.
"""
from __future__ import annotations

from typing import Any

__all__ = ["export_onnx", "ExportResult"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from hrx.export import onnx_export

        return getattr(onnx_export, name)
    raise AttributeError(f"module 'hrx.export' has no attribute {name!r}")
