"""RepLK: re-parameterizable large-kernel depthwise conv (PLKSR / SpanC style).

Training: parallel depthwise branches 3x3, 5x5, 7x7 (k x k), 1xk, kx1, each conv+BN, plus an
identity BN; their sum. Deploy (``fuse()``): one k x k depthwise conv with bias.
Contract: ``[B, C, H, W] -> [B, C, H, W]``.
"""
from __future__ import annotations

import torch
from torch import nn

from hrx.blocks.fusion import conv_bn_weights, identity_bn_weights, make_conv, pad_kernel


class RepLK(nn.Module):
    def __init__(self, channels: int, kernel: int = 7) -> None:
        super().__init__()
        assert kernel % 2 == 1 and kernel >= 3
        self.channels, self.kernel = channels, kernel
        squares = sorted({s for s in (3, 5, kernel) if s <= kernel})
        shapes = [(s, s) for s in squares] + [(1, kernel), (kernel, 1)]
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, s, padding=(s[0] // 2, s[1] // 2), groups=channels, bias=False),
                nn.BatchNorm2d(channels),
            )
            for s in shapes
        )
        self.identity: nn.BatchNorm2d | None = nn.BatchNorm2d(channels)
        self.fused: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of the large, small and strip kernel branches and the identity (one conv after :meth:`fuse`)."""
        if self.fused is not None:
            return self.fused(x)
        out = self.identity(x)
        for branch in self.branches:
            out = out + branch(x)
        return out

    @torch.no_grad()
    def fuse(self) -> None:
        """Merge every conv+BN branch and the identity into one kxk depthwise conv (idempotent)."""
        if self.fused is not None:
            return
        k = self.kernel
        w_sum, b_sum = identity_bn_weights(self.identity, self.channels, self.channels, k)
        for conv, bn in self.branches:
            w, b = conv_bn_weights(conv, bn)
            w_sum = w_sum + pad_kernel(w, k, k)
            b_sum = b_sum + b
        self.fused = make_conv(w_sum, b_sum, groups=self.channels)
        self.branches = nn.ModuleList()
        self.identity = None
