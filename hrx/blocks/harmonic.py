"""HarmonicBlock: the baseline restoration block of HARMONIC-RX.

``x -> NAF(x)`` (conv-gated residual) ``-> x + WindowAttention(x)`` (shifted on odd blocks)
``-> [x + SSMixer(x)]`` (every ``ssm_every``-th block) ``-> x + GatedFFN(x)``.
Contract: ``[B, C, H, W] -> [B, C, H, W]``, H and W multiples of ``window``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hrx.blocks.gated_ffn import GatedFFN
from hrx.blocks.naf import NAFBlock
from hrx.blocks.ssm import SSMixer
from hrx.blocks.window_attention import WindowAttention


class HarmonicBlock(nn.Module):
    def __init__(self, channels: int, heads: int, window: int, shift: bool = False, use_ssm: bool = False,
                 ffn_expansion: float = 2.0, d_state: int = 8, ssm_head_dim: int = 16, chunk: int = 32) -> None:
        super().__init__()
        self.naf = NAFBlock(channels)
        self.attn = WindowAttention(channels, heads, window, shift=shift)
        self.ssm = SSMixer(channels, d_state=d_state, head_dim=ssm_head_dim, chunk=chunk) if use_ssm else None
        self.ffn = GatedFFN(channels, ffn_expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NAF block, window attention, the SSM mixer when present, gated FFN; each residual."""
        x = self.naf(x)
        x = self.attn.residual(x)  # x + attn(x)
        if self.ssm is not None:
            x = x + self.ssm(x)
        return x + self.ffn(x)


def harmonic_stage(channels: int, depth: int, heads: int, window: int, ssm_every: int, first_index: int = 0,
                   **kw: Any) -> nn.Sequential:
    """``depth`` blocks; shifted windows on odd blocks; an SSM mixer in every ``ssm_every``-th block
    (counted from ``first_index`` across stages, 0 disables)."""
    blocks = []
    for i in range(depth):
        n = first_index + i
        blocks.append(HarmonicBlock(channels, heads, window, shift=(i % 2 == 1),
                                    use_ssm=ssm_every > 0 and (n + 1) % ssm_every == 0, **kw))
    return nn.Sequential(*blocks)
