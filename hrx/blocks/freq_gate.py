"""Frequency Separation Gate (FSG): a learned band split of a feature map, gated per pixel.

``lf = lowpass(x)`` (depthwise k x k, reflect padding), ``hf = x - lf``, ``g = sigmoid(conv1x1(x))``;
returns ``((1 - g) * lf, g * hf)``. The low-pass kernel of each channel is a softmax over its
k*k taps: positive and summing to one, so the low band stays smooth (no ringing) and
``lf + hf == x`` exactly before gating. It starts as a binomial blur.

Contract: ``[B, C, H, W] -> (lf [B, C, H, W], hf [B, C, H, W])`` in the order of
:class:`hrx.blocks.freq.FreqSplit`; H, W > k // 2 (reflect padding).
``fuse()`` turns the softmax-parameterised kernel into a plain depthwise conv.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FreqSplitGate(nn.Module):
    def __init__(self, channels: int, kernel: int = 5) -> None:
        super().__init__()
        assert kernel % 2 == 1 and kernel >= 3
        self.channels, self.kernel = channels, kernel
        taps = torch.tensor([math.comb(kernel - 1, i) for i in range(kernel)], dtype=torch.float32)
        blur = torch.outer(taps, taps) / taps.sum() ** 2  # [k, k], sums to 1
        self.lowpass_logits: nn.Parameter | None = nn.Parameter(blur.log().flatten().repeat(channels, 1))  # [C, k*k]
        self.lowpass: nn.Conv2d | None = None  # set by fuse()
        self.gate = nn.Conv2d(channels, channels, 1)

    def lowpass_kernel(self) -> torch.Tensor:
        """``[C, 1, k, k]`` depthwise kernel, positive taps summing to 1 per channel."""
        k = self.kernel
        return torch.softmax(self.lowpass_logits, dim=1).view(self.channels, 1, k, k)

    def low_pass(self, x: torch.Tensor) -> torch.Tensor:
        """The learned low-pass of ``x`` (reflect-padded depthwise conv), shape kept."""
        p = self.kernel // 2
        xp = F.pad(x, (p, p, p, p), mode="reflect")
        if self.lowpass is not None:
            return self.lowpass(xp)
        return F.conv2d(xp, self.lowpass_kernel().to(x.dtype), groups=self.channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` -> ``((1 - g) * low, g * high)`` with the learned gate ``g`` in [0, 1]."""
        lf = self.low_pass(x)  # [B, C, H, W]
        hf = x - lf
        g = torch.sigmoid(self.gate(x))  # in [0, 1]
        return (1 - g) * lf, g * hf

    @torch.no_grad()
    def fuse(self) -> None:
        """Freeze the softmax-normalised kernel into a plain depthwise conv (idempotent)."""
        if self.lowpass is not None:
            return
        w = self.lowpass_kernel()
        self.lowpass = nn.Conv2d(self.channels, self.channels, self.kernel, groups=self.channels, bias=False).to(w)
        self.lowpass.weight.copy_(w)
        self.lowpass_logits = None
