"""Reconstruction head and the exact bicubic upsampler used for the global residual.

* :class:`BicubicUpsample`: PyTorch's ``interpolate(mode="bicubic", align_corners=False)`` for an
  integer factor, written as replicate-pad + fixed depthwise 5x5 conv + PixelShuffle, so it exports
  to plain Pad/Conv/DepthToSpace and matches PyTorch exactly (border clamping included).
* :class:`ReconstructionHead`: from features at H/2: conv + PixelShuffle(2) to full resolution,
  conv + PixelShuffle(scale) (skipped for x1), conv to the output channels.
  ``[B, C, H/2, W/2] -> [B, out, H*scale, W*scale]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _cubic(t: float, a: float = -0.75) -> float:
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def bicubic_taps(scale: int) -> torch.Tensor:
    """``[scale, 5]``: weights on input offsets -2..2 for each output phase (half-pixel centres)."""
    taps = torch.zeros(scale, 5, dtype=torch.float64)
    for r in range(scale):
        src = (r + 0.5) / scale - 0.5
        base = int(torch.floor(torch.tensor(src)).item())
        frac = src - base
        for k in range(-1, 3):
            taps[r, base + k + 2] += _cubic(k - frac)
    return taps


class BicubicUpsample(nn.Module):
    def __init__(self, channels: int, scale: int) -> None:
        super().__init__()
        self.channels, self.scale = channels, scale
        t = bicubic_taps(scale)
        k = torch.einsum("ri,sj->rsij", t, t).reshape(scale * scale, 1, 5, 5).float()  # phase (ry, rx)
        self.register_buffer("kernel", k.repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, C, H * scale, W * scale]``, equal to ``F.interpolate(mode="bicubic")``."""
        if self.scale == 1:
            return x
        y = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), self.kernel.to(x.dtype), groups=self.channels)
        return F.pixel_shuffle(y, self.scale)


class ReconstructionHead(nn.Module):
    def __init__(self, channels: int, out_channels: int, scale: int, head_dim: int) -> None:
        super().__init__()
        self.to_full = nn.Sequential(nn.Conv2d(channels, head_dim * 4, 3, padding=1), nn.PixelShuffle(2))
        if scale > 1:
            self.upscale = nn.Sequential(nn.Conv2d(head_dim, head_dim * scale * scale, 3, padding=1),
                                         nn.PixelShuffle(scale), nn.GELU())
        else:
            self.upscale = nn.Identity()
        self.refine = nn.Conv2d(head_dim, out_channels, 3, padding=1)
        nn.init.zeros_(self.refine.weight)
        nn.init.zeros_(self.refine.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features -> the upscaled image residual ``[B, out_channels, H * scale, W * scale]``."""
        return self.refine(self.upscale(self.to_full(x)))
