"""The one interface every inference backend implements (ONNX Runtime, TensorRT, PyTorch).

A backend runs a static batch of square tiles::

    infer(tiles: float32 [batch, in_channels, tile, tile] in [0, 1])
        -> float32 [batch, out_channels, tile * scale, tile * scale]

Callers pad the last batch to ``batch`` tiles; backends check shapes and raise ``HRXError`` with
a clear message on a mismatch.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from hrx.runtime.model_info import ModelInfo


@runtime_checkable
class Backend(Protocol):
    name: str  # "onnxrt-cpu", "onnxrt-cuda", "tensorrt", "torch"
    info: ModelInfo  # tile, batch, scale, channels, overlap

    def infer(self, tiles: np.ndarray) -> np.ndarray: ...

    def close(self) -> None: ...
