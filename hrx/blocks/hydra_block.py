"""HydraBlock: the trunk block of HydraFusionIR's MSG stages.

``x -> NAFBlock(x)`` (conv-gated residual, re-parameterized depthwise conv)
``-> x + plk_scale * RepLKExpert(x)`` (re-parameterized large kernel -> GELU -> 1x1; ``plk_scale``
starts at zero), and with ``attention``: ``-> x + WindowAttention(x)`` (shifted when ``shift``)
``-> x + GatedFFN(x)``.
Contract: ``[B, C, H, W] -> [B, C, H, W]``; with attention, H and W multiples of ``window``.
Its parts fuse themselves (``hrx.fuse`` visits them); nothing of its own to fuse.
"""
from __future__ import annotations

import torch
from torch import nn

from hrx.blocks.gated_ffn import GatedFFN
from hrx.blocks.moe import RepLKExpert
from hrx.blocks.naf import NAFBlock
from hrx.blocks.window_attention import WindowAttention


class HydraBlock(nn.Module):
    def __init__(self, channels: int, kernel: int = 7, attention: bool = False, heads: int = 1, window: int = 8,
                 shift: bool = False, ffn_expansion: float = 2.0) -> None:
        super().__init__()
        self.naf = NAFBlock(channels)
        self.plk = RepLKExpert(channels, kernel)
        self.plk_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.attn = WindowAttention(channels, heads, window, shift=shift) if attention else None
        self.ffn = GatedFFN(channels, ffn_expansion) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NAF block, large-kernel branch, then window attention and gated FFN when enabled; each residual."""
        x = self.naf(x)
        x = x + self.plk(x) * self.plk_scale
        if self.attn is not None:
            x = self.attn.residual(x)  # x + attn(x)
            x = x + self.ffn(x)
        return x
