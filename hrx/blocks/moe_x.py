"""MoE-X: HydraFusionIR's mixture of degradation experts, routed by :class:`hrx.blocks.moe.SparseMoE`.

Four small conv experts, each with the inductive bias of its task:

* ``texture``: dense 3x3 (C -> C/2) -> GELU -> dense 3x3 (C/2 -> C): local, full channel mixing,
  synthesises high-frequency detail.
* ``denoise``: 1x1 (C -> 2C) -> depthwise 5x5 -> SimpleGate -> 1x1: gated smoothing that can
  keep edges (the gate) and average flat regions (the depthwise window).
* ``deblur``: :class:`hrx.blocks.moe.RepLKExpert` (re-parameterized large depthwise kernel -> GELU
  -> 1x1): wide support to undo a blur kernel.
* ``artifact``: PixelUnshuffle(2) -> 1x1 (4C -> C) -> depthwise 3x3 -> GELU -> 1x1 (C -> 4C) ->
  PixelShuffle(2): sees every 2x2 block with its phases apart, so it can act on grid-aligned
  blocking / ringing. ``fuse()`` makes the unshuffle + first 1x1 one 2x2 stride-2 conv.

The router sees the features, the texture cues (gradient magnitude, local variance, which also
reveal noise and blur) and, with ``cond_dim > 0``, the degradation prompt. Routing: top-2 with
the balance loss in training, top-1 through ``top1_combine`` in eval and after ``fuse()``.
Contract: ``x [B, C, H, W]``, ``cond [B, cond_dim]`` or None -> ``[B, C, H, W]`` (residual
included); H and W even (artifact expert), C even.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hrx.blocks.moe import RepLKExpert, Router, SparseMoE
from hrx.blocks.msg import unshuffle_conv
from hrx.blocks.naf import SimpleGate

MOEX_EXPERT_NAMES = ("texture", "denoise", "deblur", "artifact")


class TextureExpert(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels // 2, 3, padding=1)
        self.conv2 = nn.Conv2d(channels // 2, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two 3x3 convs with GELU between; shape kept."""
        return self.conv2(F.gelu(self.conv1(x)))


class DenoiseExpert(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pw_in = nn.Conv2d(channels, channels * 2, 1)
        self.smooth = nn.Conv2d(channels * 2, channels * 2, 5, padding=2, groups=channels * 2)
        self.gate = SimpleGate()
        self.pw_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pointwise in, smoothing depthwise conv, gate, pointwise out; shape kept."""
        return self.pw_out(self.gate(self.smooth(self.pw_in(x))))


class ArtifactExpert(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(2)
        self.pw_in = nn.Conv2d(channels * 4, channels, 1)
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pw_out = nn.Conv2d(channels, channels * 4, 1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Works at half resolution (unshuffle, depthwise, shuffle back); shape kept."""
        h = self.dw(self.pw_in(self.unshuffle(x)))  # [B, C, H/2, W/2]
        return self.shuffle(self.pw_out(F.gelu(h)))  # [B, C, H, W]

    @torch.no_grad()
    def fuse(self) -> None:
        """The unshuffle + 1x1 ``pw_in`` becomes one 2x2 stride-2 conv (no 6-D transpose in the graph)."""
        if isinstance(self.unshuffle, nn.PixelUnshuffle):
            self.pw_in = unshuffle_conv(self.pw_in, self.unshuffle.downscale_factor)
            self.unshuffle = nn.Identity()


class MoEX(SparseMoE):
    def __init__(self, channels: int, kernel: int = 7, cond_dim: int = 0, jitter: float = 0.0) -> None:
        experts = [TextureExpert(channels), DenoiseExpert(channels), RepLKExpert(channels, kernel),
                   ArtifactExpert(channels)]
        super().__init__(experts, Router(channels, len(experts), cond_dim), channels, jitter)
