"""PyTorch backend for ``hrx upscale --model CHECKPOINT``: the checkpoint's fused deploy copy, any tile
that is a multiple of the model's ``size_multiple``; ``precision="bf16"`` runs it under BF16 autocast in
channels_last memory format (the layout oneDNN's BF16 convolutions use on AVX512-BF16 / AMX CPUs)."""
from __future__ import annotations

import math
import os

import numpy as np

from hrx.errors import HRXError, MissingDependencyError
from hrx.interface import Backend, ModelInfo

DEFAULT_TILE = 256


def round_tile(tile: int, size_multiple: int) -> int:
    """``tile`` rounded up to a multiple of ``size_multiple``."""
    m = max(1, size_multiple)
    return max(m, math.ceil(tile / m) * m)


class TorchBackend(Backend):
    """Runs a checkpoint (path or bundled name) or an ``nn.Module`` with PyTorch. ``info.tile`` is the
    tile for large images; :meth:`infer` takes any batch and sides that are multiples of ``size_multiple``
    (``any_tile``), so images that fit in one tile run whole."""

    any_tile = True

    def __init__(self, model: "str | os.PathLike | torch.nn.Module", tile: int = DEFAULT_TILE,  # noqa: F821
                 batch: int = 1, device: str = "cpu", fuse: bool = True, precision: str = "fp32") -> None:
        import torch

        import hrx

        if device == "cuda" and not torch.cuda.is_available():
            raise MissingDependencyError("PyTorch has no CUDA device here; use --device cpu")
        if precision not in ("fp32", "bf16"):
            raise HRXError(f"PyTorch runs fp32 or bf16, not {precision!r}")
        self.precision = precision
        if isinstance(model, (str, os.PathLike)):
            model = hrx.load_model(model)
        self.model = (hrx.fuse(model) if fuse else model).eval().to(device)
        if precision == "bf16":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.device = device
        self.name = "torch"
        m = int(getattr(model, "size_multiple", 1))
        tile = round_tile(tile, m)
        if batch < 1:
            raise HRXError(f"batch must be >= 1, not {batch}")
        self.info = ModelInfo(arch=str(getattr(model, "arch", type(model).__name__)), scale=int(model.scale),
                              in_channels=int(model.in_channels), out_channels=int(model.out_channels),
                              tile=tile, batch=batch, size_multiple=m,
                              tile_overlap=min(int(getattr(model, "tile_overlap", 0)), tile // 2 // m * m), ops="torch")

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        """Run one batch of tiles through the PyTorch model."""
        import torch

        i = self.info
        if tiles.ndim != 4 or tiles.shape[1] != i.in_channels or tiles.shape[2] % i.size_multiple \
                or tiles.shape[3] % i.size_multiple:
            raise HRXError(f"expected tiles [N, {i.in_channels}, H, W] with sides multiples of {i.size_multiple}, "
                           f"got {list(tiles.shape)}")
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(tiles, dtype=np.float32)).to(self.device)
            if self.precision == "fp32":
                return self.model(x).float().cpu().numpy()
            device_type = "cuda" if str(self.device).startswith("cuda") else "cpu"
            with torch.autocast(device_type, dtype=torch.bfloat16):
                y = self.model(x.contiguous(memory_format=torch.channels_last))
            return y.float().contiguous().cpu().numpy()

    def close(self) -> None:
        """Drop the model; idempotent."""
        self.model = None
