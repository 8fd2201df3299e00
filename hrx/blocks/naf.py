"""NAF-style conv-gated residual block (NAFNet), with a re-parameterizable depthwise conv.

``x -> x + beta * proj(SCA(SimpleGate(dw(pw(LN(x))))))``, then
``x -> x + gamma * pw2(SimpleGate(pw1(LN(x))))``.
Contract: ``[B, C, H, W] -> [B, C, H, W]``. ``fuse()`` folds the LayerNorm affines into the
following 1x1 convs and the depthwise 3x3 + 1x1 + identity-BN branches into one 3x3.
"""
from __future__ import annotations

import torch
from torch import nn

from hrx.blocks.fusion import conv_bn_weights, identity_bn_weights, make_conv, pad_kernel
from hrx.blocks.norm import LayerNorm2d, fold_norm_into


class SimpleGate(nn.Module):
    """Split channels in two halves and multiply them: ``[B, 2C, H, W] -> [B, C, H, W]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Split the channels in two halves and multiply them: ``[B, 2C, H, W]`` -> ``[B, C, H, W]``."""
        a, b = x.chunk(2, dim=1)
        return a * b


class RepDWConv3(nn.Module):
    """Depthwise 3x3 + depthwise 1x1 + identity, each with BN; fuses to one depthwise 3x3."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.conv3 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                                   nn.BatchNorm2d(channels))
        self.conv1 = nn.Sequential(nn.Conv2d(channels, channels, 1, groups=channels, bias=False),
                                   nn.BatchNorm2d(channels))
        self.identity: nn.BatchNorm2d | None = nn.BatchNorm2d(channels)
        self.fused: nn.Conv2d | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise 3x3 + 1x1 + identity branches (one fused conv after :meth:`fuse`)."""
        if self.fused is not None:
            return self.fused(x)
        return self.conv3(x) + self.conv1(x) + self.identity(x)

    @torch.no_grad()
    def fuse(self) -> None:
        """Merge the conv+BN branches and the identity into one depthwise 3x3 conv (idempotent)."""
        if self.fused is not None:
            return
        w3, b3 = conv_bn_weights(*self.conv3)
        w1, b1 = conv_bn_weights(*self.conv1)
        wi, bi = identity_bn_weights(self.identity, self.channels, self.channels, 3)
        self.fused = make_conv(w3 + pad_kernel(w1, 3, 3) + wi, b3 + b1 + bi, groups=self.channels)
        del self.conv3, self.conv1
        self.identity = None


class NAFBlock(nn.Module):
    def __init__(self, channels: int, dw_expand: int = 2, ffn_expand: int = 2) -> None:
        super().__init__()
        dw = channels * dw_expand
        self.norm1 = LayerNorm2d(channels)
        self.pw_in = nn.Conv2d(channels, dw, 1)
        self.dw = RepDWConv3(dw)
        self.gate = SimpleGate()
        # simplified channel attention: global average pool + 1x1
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(dw // 2, dw // 2, 1))
        self.pw_out = nn.Conv2d(dw // 2, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.ffn_in = nn.Conv2d(channels, channels * ffn_expand, 1)
        self.ffn_out = nn.Conv2d(channels * ffn_expand // 2, channels, 1)
        # zero-initialised residual scales: an untrained block is the identity
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """NAF conv-gated block with simplified channel attention and its FFN; each residual."""
        y = self.gate(self.dw(self.pw_in(self.norm1(x))))  # [B, dw/2, H, W]
        y = y * self.sca(y)
        x = x + self.pw_out(y) * self.beta
        y = self.ffn_out(self.gate(self.ffn_in(self.norm2(x))))
        return x + y * self.gamma

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold both norms into the convs after them and fuse the depthwise conv."""
        fold_norm_into(self.norm1, self.pw_in)
        fold_norm_into(self.norm2, self.ffn_in)
        self.dw.fuse()
