"""Channel LayerNorm for NCHW maps, and folding its affine part into the following 1x1 conv.

``LayerNorm2d``: ``[B, C, H, W] -> [B, C, H, W]``, normalising over C per pixel. Statistics are
computed in float32 so that fp16/bf16 runs stay finite.
"""
from __future__ import annotations

import torch
from torch import nn


class LayerNorm2d(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight: nn.Parameter | None = nn.Parameter(torch.ones(channels))
        self.bias: nn.Parameter | None = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Layer norm over the channels of ``[B, C, H, W]``, computed in float32, returned in the input dtype."""
        dtype = x.dtype
        x = x.float()
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        x = (x - mu) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            x = x * self.weight.float().view(1, -1, 1, 1) + self.bias.float().view(1, -1, 1, 1)
        return x.to(dtype)


def fold_norm_into(norm: LayerNorm2d, layer: nn.Module) -> None:
    """Fold ``norm``'s affine (w, b) into ``layer`` (a 1x1 Conv2d or a Linear over channels).

    Valid when ``layer`` is the only consumer of ``norm``'s output. Safe to call twice.
    """
    if norm.weight is None:
        return
    w, b = norm.weight.detach(), norm.bias.detach()
    weight = layer.weight.data  # [O, C, 1, 1] or [O, C]
    flat = weight.reshape(weight.shape[0], weight.shape[1])
    extra = flat @ b
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(weight.shape[0], device=weight.device, dtype=weight.dtype))
    layer.bias.data += extra
    shape = (1, -1) + (1,) * (weight.dim() - 2)
    layer.weight.data = weight * w.view(shape)
    norm.weight = None
    norm.bias = None
