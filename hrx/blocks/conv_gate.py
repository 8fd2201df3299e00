"""Convolutional gating (CG): content-adaptive suppression, ``x * sigmoid(dwconv3x3(x))``.

The depthwise 3x3 is :class:`hrx.blocks.naf.RepDWConv3` (3x3 + 1x1 + identity branches with BN in
training, one depthwise 3x3 after ``fuse()``). The gate is bounded in [0, 1].
Contract: ``[B, C, H, W] -> [B, C, H, W]``.
"""
from __future__ import annotations

import torch
from torch import nn

from hrx.blocks.naf import RepDWConv3


class ConvGate(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw = RepDWConv3(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x * sigmoid(depthwise(x))``; shape kept."""
        return x * torch.sigmoid(self.dw(x))

    @torch.no_grad()
    def fuse(self) -> None:
        """Fuse the re-parameterized depthwise conv (idempotent)."""
        self.dw.fuse()
