"""What every HRX architecture tells the deploy tooling (a spandrel-style descriptor), once.

Subclasses hold a ``config`` dataclass with ``scale``, ``in_channels`` and ``out_channels`` and
define ``size_multiple`` and ``tile_overlap`` from their own structure.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from hrx.blocks.moe import SparseMoE


class IOConfig(Protocol):
    """What :func:`check_io_config` reads of a model config."""

    scale: int
    in_channels: int
    out_channels: int | None


def check_io_config(cfg: IOConfig) -> None:
    """Shared config rules: out_channels defaults to in_channels; scale 1-4; channels 1, 3 or 4."""
    if cfg.out_channels is None:
        cfg.out_channels = cfg.in_channels
    if cfg.scale not in (1, 2, 3, 4):
        raise ValueError(f"scale must be 1, 2, 3 or 4, not {cfg.scale}")
    if cfg.in_channels not in (1, 3, 4) or cfg.out_channels not in (1, 3, 4):
        raise ValueError("in_channels and out_channels must be 1, 3 or 4")


def match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Map an image ``[B, c, H, W]`` (c in 1, 3, 4) to ``channels`` for the global residual:
    gray <-> colour by mean / repeat, alpha dropped or added as opaque."""
    c = x.shape[1]
    if c == channels:
        return x
    colour = x[:, :3] if c == 4 else (x.expand(-1, 3, -1, -1) if c == 1 else x)
    if channels == 1:
        return colour.mean(1, keepdim=True)
    if channels == 3:
        return colour
    return torch.cat([colour, torch.ones_like(colour[:, :1])], 1)


class RestorationModel(nn.Module):
    config: object

    @property
    def scale(self) -> int:
        """Upscale factor."""
        return self.config.scale

    @property
    def in_channels(self) -> int:
        """Input channels."""
        return self.config.in_channels

    @property
    def out_channels(self) -> int:
        """Output channels."""
        return int(self.config.out_channels)

    @property
    def size_multiple(self) -> int:  # pragma: no cover - every architecture defines it
        """Input sides must be multiples of this."""
        raise NotImplementedError

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError when the input sides are not multiples of :attr:`size_multiple`."""
        m = self.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"input sides {tuple(x.shape[-2:])} must be multiples of size_multiple={m}; pad first")

    def aux_loss(self) -> torch.Tensor:
        """MoE load-balancing loss of the last training forward (0 in eval)."""
        losses = [m.aux_loss for m in self.modules() if isinstance(m, SparseMoE) and m.aux_loss is not None]
        return torch.stack(losses).sum() if losses else torch.zeros(())
