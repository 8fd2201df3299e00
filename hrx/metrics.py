"""Image measures every layer shares (training, export verify, calibration, runtime, benchmarks):
ITU-R BT.601 luma / YCbCr and PSNR. numpy only; torch tensors work where noted.
"""
from __future__ import annotations

import math

import numpy as np

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


def psnr(a, b, peak: float = 1.0) -> float:
    """PSNR (dB) between two arrays (numpy or torch), the error taken in float64."""
    a, b = (np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64) for x in (a, b))
    return psnr_from_mse(float(np.mean((a - b) ** 2)), peak)
