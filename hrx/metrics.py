"""Image measures every layer shares (training, export verify, calibration, runtime, benchmarks):
ITU-R BT.601 luma / YCbCr and PSNR. numpy only; torch tensors work where noted.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

BT601 = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights of R, G, B
# studio-range luma of RGB in [0, 1]: Y = 16 + sum(Y_WEIGHTS * rgb), in [16, 235] (the usual SR protocol)
Y_OFFSET = 16.0
Y_WEIGHTS = tuple(219.0 * w for w in BT601)  # (65.481, 128.553, 24.966)


def ycbcr_matrix() -> np.ndarray:
    """Full-range BT.601 RGB -> YCbCr (Cb, Cr centred on 0) as a ``[3, 3]`` float64 matrix."""
    kr, kg, kb = BT601
    return np.array([[kr, kg, kb],
                     [-kr / (2 * (1 - kb)), -kg / (2 * (1 - kb)), 0.5],
                     [0.5, -kg / (2 * (1 - kr)), -kb / (2 * (1 - kr))]])


def psnr_from_mse(mse: float, peak: float = 1.0) -> float:
    """PSNR in dB of a mean squared error at the given peak; ``inf`` for identical signals."""
    return float("inf") if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, peak: float = 1.0) -> float:
    """PSNR (dB) between two arrays (numpy or torch), the error taken in float64."""
    a, b = (np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64) for x in (a, b))
    return psnr_from_mse(float(np.mean((a - b) ** 2)), peak)


def psnr_8bit(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB, peak 255) of two float images in [0, 1] clipped and rounded to 8 bits, each in its own type:
    what files written from them would show."""
    a8, b8 = (np.round(np.clip(x, 0, 1) * 255).astype(np.float64) for x in (a, b))
    return psnr_from_mse(float(np.mean((a8 - b8) ** 2)), 255.0)


def luma(img: np.ndarray | torch.Tensor) -> np.ndarray:
    """``[N, C, H, W]`` in [0, 1] (numpy or torch) -> ``[N, H, W]`` float64: the 8-bit rounded image's BT.601
    studio luma in [16, 235] (RGB, and RGBA's colour part), or a single channel's levels in [0, 255]."""
    x = np.asarray(img.detach().cpu() if hasattr(img, "detach") else img)
    x = x if x.dtype.kind == "f" else x.astype(np.float64)
    q = (np.round(np.clip(x, 0.0, 1.0) * 255.0) / 255.0).astype(np.float64)  # rounded in the image's own type
    if q.shape[1] >= 3:
        return np.einsum("nchw,c->nhw", q[:, :3], np.array(Y_WEIGHTS)) + Y_OFFSET
    return q[:, 0] * 255.0


def psnr_y(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, border: int = 0) -> float:
    """PSNR (dB, peak 255) of the luma (:func:`luma`) of two ``[N, C, H, W]`` batches in [0, 1], ``border``
    pixels cropped from each side, the error pooled over the batch: the usual super-resolution measure."""
    a, b = luma(pred), luma(target)
    if border > 0:
        a, b = a[:, border:-border, border:-border], b[:, border:-border, border:-border]
    return psnr_from_mse(float(np.mean((a - b) ** 2)), 255.0)
