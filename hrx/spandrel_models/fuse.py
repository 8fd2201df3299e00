"""Deploy forms of re-parameterizable blocks in spandrel architectures.

SPAN's ``Conv3XC`` trains as ``1x1 -> 3x3 -> 1x1`` plus a ``1x1`` skip, and in eval mode recomputes
the equivalent single 3x3 kernel on *every* forward call (``update_params``), which the exporter
would trace into the graph. :func:`fuse_reparam` computes that kernel once and replaces the block by
:class:`FusedConv3XC` (one 3x3 conv, then the block's optional leaky ReLU). Architectures without
such blocks pass through unchanged (the function returns 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FusedConv3XC(nn.Module):
    """One 3x3 conv equal to a Conv3XC's three branches."""

    def __init__(self, conv: nn.Conv2d, relu: bool) -> None:
        super().__init__()
        self.conv = conv
        self.has_relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fused conv, then leaky ReLU when the original block had one."""
        out = self.conv(x)
        return F.leaky_relu(out, negative_slope=0.05) if self.has_relu else out


def _fused_conv3xc(block: nn.Module) -> FusedConv3XC:
    with torch.no_grad():
        block.update_params()  # spandrel's own kernel algebra, into block.eval_conv
        src = block.eval_conv
        conv = nn.Conv2d(src.in_channels, src.out_channels, 3, stride=src.stride, padding=1, bias=True)
        conv.weight.copy_(src.weight)
        conv.bias.copy_(src.bias)
    conv.requires_grad_(False)
    return FusedConv3XC(conv, bool(block.has_relu))


def _is_conv3xc(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv3XC" and hasattr(module, "update_params") and hasattr(module, "eval_conv")


def fuse_reparam(net: nn.Module) -> int:
    """Replace every re-parameterizable block of ``net`` in place; returns how many were fused."""
    count = 0
    for name, child in list(net.named_children()):
        if _is_conv3xc(child):
            setattr(net, name, _fused_conv3xc(child))
            count += 1
        else:
            count += fuse_reparam(child)
    return count
