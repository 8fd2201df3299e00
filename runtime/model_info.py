"""Re-exports :class:`hrx.interface.ModelInfo` and :func:`hrx.interface.load_onnx` (their home is
below export and runtime, so neither imports the other for them)."""
from hrx.interface import ModelInfo, load_onnx

__all__ = ["ModelInfo", "load_onnx"]
