"""ONNX export: fuse, freeze to static shapes, export, check, simplify; and verification.

``export_onnx`` is imported lazily (:func:`hrx.lazy.lazy_getattr`) so ``import hrx.export`` stays light.
"""
from __future__ import annotations

from hrx.lazy import lazy_getattr

_LAZY = {"export_onnx": "hrx.export.onnx_export", "ExportResult": "hrx.export.onnx_export"}
__getattr__ = lazy_getattr(__name__, _LAZY)
__all__ = list(_LAZY)
