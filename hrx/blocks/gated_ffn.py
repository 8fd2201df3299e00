"""Gated feed-forward network (Restormer GDFN style): LN -> 1x1 -> depthwise 3x3 -> GELU gate -> 1x1.

Contract: ``[B, C, H, W] -> [B, C, H, W]`` (the residual is added by the caller).
``fuse()`` folds the LayerNorm affine into the input 1x1 conv.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hrx.blocks.norm import LayerNorm2d, fold_norm_into


class GatedFFN(nn.Module):
    def __init__(self, channels: int, expansion: float = 2.0) -> None:
        super().__init__()
        hidden = int(channels * expansion)
        self.norm = LayerNorm2d(channels)
        self.project_in = nn.Conv2d(channels, hidden * 2, 1)
        self.dw = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2)
        self.project_out = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gated feed-forward (GDFN): ``[B, C, H, W]`` -> the same shape (the caller adds the residual)."""
        a, b = self.dw(self.project_in(self.norm(x))).chunk(2, dim=1)  # [B, hidden, H, W] each
        return self.project_out(F.gelu(a) * b)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the norm into the input projection."""
        fold_norm_into(self.norm, self.project_in)
