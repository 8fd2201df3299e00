"""Frequency split into a low band (structure) and a high band (detail), with ``lf + hf == x``.

* ``haar``: orthonormal 2-D Haar DWT on 2x2 blocks (:func:`haar_dwt` / :func:`haar_idwt`, exactly
  invertible); the low band is the inverse transform of LL alone (2x2 block means), the high band
  the inverse of LH, HL, HH.
* ``laplacian``: low band = separable 5-tap binomial blur with reflect padding; high band = x - low.

Contract: ``[B, C, H, W] -> (lf [B, C, H, W], hf [B, C, H, W])``; H, W even for ``haar``.
There is nothing to fuse: the transforms are fixed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# rows: LL, LH, HL, HH; columns: the 2x2 block (a b / c d) in pixel_unshuffle order
_HAAR = 0.5 * torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, 1.0, -1.0], [1.0, -1.0, -1.0, 1.0]])


def haar_dwt(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, 4, C, H/2, W/2]`` subbands (LL, LH, HL, HH)."""
    b, c, h, w = x.shape
    blocks = F.pixel_unshuffle(x, 2).view(b, c, 4, h // 2, w // 2)
    return torch.einsum("kj,bcjhw->bkchw", _HAAR.to(x), blocks)


def haar_idwt(bands: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`haar_dwt`: ``[B, 4, C, h, w] -> [B, C, 2h, 2w]``."""
    b, _, c, h, w = bands.shape
    blocks = torch.einsum("kj,bkchw->bcjhw", _HAAR.to(bands), bands)
    return F.pixel_shuffle(blocks.reshape(b, c * 4, h, w), 2)


class FreqSplit(nn.Module):
    def __init__(self, mode: str = "haar") -> None:
        super().__init__()
        if mode not in ("haar", "laplacian"):
            raise ValueError(f"FreqSplit mode must be 'haar' or 'laplacian', not {mode!r}")
        self.mode = mode
        self.register_buffer("taps", torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0, persistent=False)

    def low_pass(self, x: torch.Tensor) -> torch.Tensor:
        """The low band of ``x`` at full resolution (Haar: 2x2 block means; Laplacian: 5-tap blur)."""
        if self.mode == "haar":
            # inverse Haar of the LL band alone == mean of each 2x2 block, repeated
            b, c, h, w = x.shape
            mean = F.avg_pool2d(x, 2)
            return F.interpolate(mean, scale_factor=2, mode="nearest")
        c = x.shape[1]
        kx = self.taps.to(x).view(1, 1, 1, 5).repeat(c, 1, 1, 1)
        ky = self.taps.to(x).view(1, 1, 5, 1).repeat(c, 1, 1, 1)
        x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode="reflect"), kx, groups=c)
        return F.conv2d(F.pad(x, (0, 0, 2, 2), mode="reflect"), ky, groups=c)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` -> ``(low, high)`` with ``low + high == x`` exactly."""
        lf = self.low_pass(x)
        return lf, x - lf
