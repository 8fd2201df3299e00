"""MSG U-Net pieces: downsample, upsample, and gated fusion of equal-resolution maps.

* :class:`Downsample`: PixelUnshuffle(2) + 3x3 conv, ``[B, C, H, W] -> [B, Co, H/2, W/2]``.
* :class:`Upsample`: 3x3 pre-filter conv + PixelShuffle(2), ``[B, C, H, W] -> [B, Co, 2H, 2W]``.
* :class:`GatedFuse`: ``x + g * proj(skip)`` with ``g = sigmoid(conv1x1([x, skip])) * gain`` and
  ``gain`` clamped to ``[0, max_gain]`` (bounded fusion weights avoid ringing). Both inputs must
  have the same shape.
"""
from __future__ import annotations

import torch
from torch import nn


class Downsample(nn.Module):
    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(2)
        self.conv = nn.Conv2d(channels * 4, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.unshuffle(x))


class Upsample(nn.Module):
    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class GatedFuse(nn.Module):
    def __init__(self, channels: int, max_gain: float = 1.0) -> None:
        super().__init__()
        self.gate = nn.Conv2d(channels * 2, channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.gain = nn.Parameter(torch.full((1, channels, 1, 1), 0.5))
        self.max_gain = max_gain

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if x.shape != skip.shape:
            raise ValueError(f"GatedFuse needs equal shapes, got {tuple(x.shape)} and {tuple(skip.shape)}")
        g = torch.sigmoid(self.gate(torch.cat([x, skip], 1))) * self.gain.clamp(0.0, self.max_gain)
        return x + g * self.proj(skip)
