"""Full-resolution reconstruction head: features at the input resolution -> image at ``scale``.

``conv3x3 (C -> head_dim * scale^2) -> PixelShuffle(scale) -> GELU -> conv3x3 (head_dim -> out)``
(for ``scale == 1``: ``conv3x3 (C -> head_dim) -> GELU -> conv3x3``). The last conv starts at
zero, so with a bicubic global residual an untrained model returns bicubic upscaling.
Contract: ``[B, C, H, W] -> [B, out, H*scale, W*scale]``. Nothing to fuse.
(:class:`hrx.blocks.head.ReconstructionHead` is HARMONIC-RX's head for features at H/2.)
"""
from __future__ import annotations

import torch
from torch import nn


class UpscaleHead(nn.Module):
    def __init__(self, channels: int, out_channels: int, scale: int, head_dim: int) -> None:
        super().__init__()
        self.upscale = nn.Sequential(nn.Conv2d(channels, head_dim * scale * scale, 3, padding=1),
                                     nn.PixelShuffle(scale), nn.GELU())
        self.refine = nn.Conv2d(head_dim, out_channels, 3, padding=1)
        nn.init.zeros_(self.refine.weight)
        nn.init.zeros_(self.refine.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features -> upscaled output (upscale, then the refine conv)."""
        return self.refine(self.upscale(x))
