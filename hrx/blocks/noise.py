"""Per-layer noise injection (StyleGAN style) for the GAN texture mode.

``x + strength * n`` with ``n ~ N(0, 1)`` of shape ``[B, 1, H, W]`` (one noise map shared by the
channels) and a learned per-channel ``strength [1, C, 1, 1]`` that starts at zero. Active only
when the module is training AND ``enabled`` (the texture mode) is on; otherwise the identity, so
eval is deterministic. ``fuse()`` switches it off for good; the block that owns it then drops it
(see :class:`hrx.blocks.detail.DetailBlock`), so fused and exported graphs hold no noise.
Contract: ``[B, C, H, W] -> [B, C, H, W]``.
"""
from __future__ import annotations

import torch
from torch import nn


class NoiseInjection(nn.Module):
    def __init__(self, channels: int, enabled: bool = False) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.enabled = enabled
        self.removed = False

    @property
    def active(self) -> bool:
        """Whether noise is added: training, enabled and not removed by :meth:`fuse`."""
        return self.training and self.enabled and not self.removed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus learned-strength Gaussian noise when :attr:`active`, else ``x``."""
        if not self.active:
            return x
        b, _, h, w = x.shape
        noise = torch.randn(b, 1, h, w, device=x.device, dtype=x.dtype)
        return x + self.strength.to(x.dtype) * noise

    @torch.no_grad()
    def fuse(self) -> None:
        """Remove the noise for good (deploy)."""
        self.enabled = False
        self.removed = True
