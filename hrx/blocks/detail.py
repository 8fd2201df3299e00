"""DetailBlock: the HF refiner block of HydraFusionIR (GAN-friendly, optional noise injection).

``h = pw_in(x)`` (C -> 2C) ``-> RepDWConv3 -> NoiseInjection -> SimpleGate`` (2C -> C)
``-> HaarBandMix`` (band-wise channel mixing); output ``x + beta * h`` with ``beta`` starting at
zero (an untrained block is the identity).
Contract: ``[B, C, H, W] -> [B, C, H, W]``, H and W even.
``fuse()`` fuses the depthwise branches and the band mix and removes the noise injection.
"""
from __future__ import annotations

import torch
from torch import nn

from hrx.blocks.band_mix import HaarBandMix
from hrx.blocks.naf import RepDWConv3, SimpleGate
from hrx.blocks.noise import NoiseInjection


class DetailBlock(nn.Module):
    def __init__(self, channels: int, texture_mode: bool = False) -> None:
        super().__init__()
        self.pw_in = nn.Conv2d(channels, channels * 2, 1)
        self.dw = RepDWConv3(channels * 2)
        self.noise: NoiseInjection | None = NoiseInjection(channels * 2, enabled=texture_mode)
        self.gate = SimpleGate()
        self.mix = HaarBandMix(channels)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> the same shape, with the block's residual added."""
        h = self.dw(self.pw_in(x))  # [B, 2C, H, W]
        if self.noise is not None:
            h = self.noise(h)
        h = self.mix(self.gate(h))  # [B, C, H, W]
        return x + h * self.beta

    @torch.no_grad()
    def fuse(self) -> None:
        """Fuse the depthwise and mixing convs and drop the training noise (idempotent)."""
        self.dw.fuse()
        self.mix.fuse()
        self.noise = None
