"""Helpers for re-parameterization: folding BatchNorm into convs and padding kernels.

Every block in :mod:`hrx.blocks` that has training-only branches exposes ``fuse()``; these
helpers hold the arithmetic those methods share.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_weights(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (weight, bias) of a single conv equal to ``bn(conv(x))`` in eval mode."""
    w = conv.weight
    b = conv.bias if conv.bias is not None else torch.zeros(w.shape[0], device=w.device, dtype=w.dtype)
    if bn is None:
        return w, b
    std = torch.sqrt(bn.running_var + bn.eps)
    g = bn.weight / std
    return w * g.reshape(-1, 1, 1, 1), bn.bias + (b - bn.running_mean) * g


def identity_bn_weights(bn: nn.BatchNorm2d, channels: int, groups: int, kernel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of a ``kernel``x``kernel`` conv (with ``groups``) equal to ``bn(x)``."""
    in_per_group = channels // groups
    w = torch.zeros(channels, in_per_group, kernel, kernel, device=bn.weight.device, dtype=bn.weight.dtype)
    c = kernel // 2
    for i in range(channels):
        w[i, i % in_per_group, c, c] = 1.0
    conv = nn.Conv2d(channels, channels, kernel, groups=groups, bias=False).to(w)
    conv.weight.data = w
    return conv_bn_weights(conv, bn)


def pad_kernel(w: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Zero-pad a conv kernel ``[O, I, h, w]`` centrally to ``[O, I, kh, kw]``."""
    ph, pw = (kh - w.shape[2]) // 2, (kw - w.shape[3]) // 2
    return F.pad(w, (pw, kw - w.shape[3] - pw, ph, kh - w.shape[2] - ph))


def make_conv(weight: torch.Tensor, bias: torch.Tensor, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` with 'same' padding holding the given weights."""
    o, i, kh, kw = weight.shape
    conv = nn.Conv2d(i * groups, o, (kh, kw), padding=(dilation * (kh // 2), dilation * (kw // 2)),
                     groups=groups, dilation=dilation, bias=True)
    conv.weight.data.copy_(weight)
    conv.bias.data.copy_(bias)
    return conv.to(weight.device)
