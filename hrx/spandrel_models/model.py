"""A spandrel model as an HRX deployable model.

:class:`SpandrelModel` wraps the ``torch.nn.Module`` that spandrel built and exposes what the
exporter, the runtime and the calibrator read from an HRX model: ``arch, scale, in_channels,
out_channels, size_multiple, tile_overlap`` plus spandrel's other size requirements
(``min_size``, ``square``) and dtype support (``fp16``, ``bf16``). ``forward`` is spandrel's own call
(its ``call_fn``), without the final clamp (the runtime clamps when it writes images), and pads inputs
that miss the size requirements the way spandrel does, so any tile works under PyTorch.

Tile overlap (:func:`overlap_rule`): the receptive-field radius ``r`` in input pixels, from the
hyper-parameters of each architecture (every 3x3 conv adds 1, a k x k conv ``k // 2``; window
attention adds its window per block; global pooling / GroupNorm make it unbounded). The default
``blend`` merge gives each pixel at least a quarter of the overlap as context, so the overlap is
``4 * r``, rounded up to the size multiple and capped at :data:`MAX_OVERLAP` (for unbounded fields the
cap). ``benchmarks/spandrel_support.py`` measures tiled-vs-whole PSNR at that overlap and at 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MAX_OVERLAP = 32  # input pixels: (256 / (256 - 32))^2 = 1.31x the work of non-overlapping 256 tiles


@dataclass(frozen=True)
class OverlapChoice:
    radius: int | None  # receptive-field radius in input pixels; None: unbounded (global ops)
    overlap: int
    why: str


def _round_up(x: int, m: int) -> int:
    return int(math.ceil(x / m) * m)


def receptive_radius(arch: str, net: nn.Module) -> tuple[int | None, str]:
    """(radius in input pixels or None for unbounded, how it was derived)."""
    hp = dict(getattr(net, "hyperparameters", {}) or {})
    if arch == "PLKSR":  # spandrel's PLKSR id covers PLKSR and RealPLKSR
        arch = type(net).__name__
    if arch == "ESRGAN":
        nb = int(hp.get("num_blocks", 23))
        return 15 * nb + 3, f"{nb} RRDB x 15 3x3 convs + 3"
    if arch == "Compact":
        nc = int(hp.get("num_conv", 16))
        return nc + 2, f"{nc + 2} 3x3 convs"
    if arch == "SPAN":
        return 21, "21 3x3 convs (Conv3XC fused)"
    if arch in ("SwinIR", "Swin2SR", "HAT", "DAT", "DRCT", "ATD"):
        return None, f"shifted-window attention (window {getattr(net, 'window_size', '?')}): field grows with depth"
    if arch == "OmniSR":
        return None, "grid attention and channel attention span the tile"
    if arch == "PLKSR":
        nb, k = int(hp.get("n_blocks", 28)), int(hp.get("kernel_size", 17))
        return nb * (k // 2 + 1) + 2, f"{nb} blocks x ({k}x{k} large kernel + 3x3)"
    if arch == "RealPLKSR":
        return None, "GroupNorm statistics span the tile"
    if arch == "SAFMN":
        return None, "adaptive max-pool pyramid (down to 1/8) spans the tile"
    return None, "receptive field not analysed for this architecture"


def overlap_rule(arch: str, net: nn.Module, size_multiple: int) -> OverlapChoice:
    """Tile overlap for a spandrel network: four times its receptive radius, rounded up to ``size_multiple`` and
    capped."""
    radius, how = receptive_radius(arch, net)
    cap = _round_up(MAX_OVERLAP, size_multiple)
    if radius is None:
        return OverlapChoice(None, cap, f"{how}; cap {cap}")
    want = _round_up(4 * radius, size_multiple)
    if want <= cap:
        return OverlapChoice(radius, want, f"{how}: r={radius}, 4r={want}")
    return OverlapChoice(radius, cap, f"{how}: r={radius}, 4r={want} > cap {cap}")


class SpandrelModel(nn.Module):
    """spandrel's network with HRX's deploy attributes. ``self.net`` is spandrel's module."""

    source = "spandrel"

    def __init__(self, descriptor) -> None:
        super().__init__()
        self.net = descriptor.model
        self.arch = str(descriptor.architecture.id)
        self.arch_name = str(descriptor.architecture.name)
        self.scale = int(descriptor.scale)
        self.in_channels = int(descriptor.input_channels)
        self.out_channels = int(descriptor.output_channels)
        req = descriptor.size_requirements
        self.size_multiple = int(req.multiple_of)
        self.min_size = int(req.minimum)
        self.square = bool(req.square)
        self.fp16 = bool(descriptor.supports_half)
        self.bf16 = bool(descriptor.supports_bfloat16)
        self.tags = [str(t) for t in descriptor.tags]
        self.purpose = str(descriptor.purpose)
        self._call = descriptor._call_fn  # spandrel's per-architecture call (e.g. picks output [0])
        choice = overlap_rule(self.arch, self.net, self.size_multiple)
        self.tile_overlap = choice.overlap
        self.overlap_choice = choice

    def info_extra(self) -> dict[str, str]:
        """What goes into the ONNX metadata besides the ModelInfo fields."""
        import spandrel

        return {"source": "spandrel", "spandrel_version": spandrel.__version__, "arch_name": self.arch_name,
                "tags": ",".join(self.tags), "overlap_rule": self.overlap_choice.why}

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        h, w = x.shape[-2:]
        m = self.size_multiple
        th, tw = _round_up(max(h, self.min_size), m), _round_up(max(w, self.min_size), m)
        if self.square:
            th = tw = max(th, tw)
        if (th, tw) == (h, w):
            return x, h, w
        rh, rw = min(th - h, h - 1), min(tw - w, w - 1)  # reflect first, as spandrel's pad_tensor does
        x = F.pad(x, (0, rw, 0, rh), mode="reflect")
        x = F.pad(x, (0, tw - w - rw, 0, th - h - rh), mode="replicate")
        return x, h, w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad to the network's size requirements, run it, crop back to ``scale`` times the input."""
        x, h, w = self._pad(x)
        out = self._call(self.net, x)
        if out.shape[-2:] != (h * self.scale, w * self.scale):
            out = out[..., : h * self.scale, : w * self.scale]
        return out

    def fuse(self) -> None:
        """Called by :func:`hrx.fuse` on the deploy copy: re-parameterizable blocks become plain convs."""
        from hrx.spandrel_models.fuse import fuse_reparam

        fuse_reparam(self.net)
