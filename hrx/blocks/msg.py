"""MSG U-Net pieces: downsample, upsample, and gated fusion of equal-resolution maps.

* :class:`Downsample`: PixelUnshuffle(2) + 3x3 conv, ``[B, C, H, W] -> [B, Co, H/2, W/2]``;
  ``fuse()`` makes it one 6x6 stride-2 conv on the full-resolution map (:func:`unshuffle_conv`).
* :class:`Upsample`: 3x3 pre-filter conv + PixelShuffle(2), ``[B, C, H, W] -> [B, Co, 2H, 2W]``.
* :class:`GatedFuse`: ``x + g * proj(skip)`` with ``g = sigmoid(conv1x1([x, skip])) * gain`` and
  ``gain`` clamped to ``[0, max_gain]`` (bounded fusion weights avoid ringing). Both inputs must
  have the same shape. ``fuse()`` splits the gate conv into one conv per input and adds them (no
  concatenated copy; ONNX Runtime, 2 threads, C=32 at 64x64: 0.86x of the time).

:func:`unshuffle_conv`: ``conv(pixel_unshuffle(x, r))`` as one conv on ``x`` (kernel ``r*k``, stride
``r``, padding ``r*p``; the weights rearranged, the sums the same), so a deploy graph needs no
unshuffle: PixelUnshuffle exports as a 6-D Transpose that ONNX Runtime's CPU path runs slowly
(measured on the stem and the downsample: the strided conv takes 0.64x-0.66x their time).
"""
from __future__ import annotations

import torch
from torch import nn


def unshuffle_conv(conv: nn.Conv2d, factor: int) -> nn.Conv2d:
    """The conv ``c2`` with ``c2(x) == conv(pixel_unshuffle(x, factor))`` (exact re-parameterization).

    Unshuffled channel ``c * r*r + i * r + j`` at ``(y, x)`` is pixel ``(r*y + i, r*x + j)``, so tap
    ``(dy, dx)`` of ``conv`` on it is tap ``(r*dy + i, r*dx + j)`` of a ``r*k`` kernel with stride ``r``;
    zero padding ``p`` of the small map is zero padding ``r*p`` of the large one."""
    r = factor
    kh, kw = conv.kernel_size
    if conv.groups != 1 or conv.stride != (1, 1) or conv.dilation != (1, 1) or not isinstance(conv.padding, tuple) \
            or conv.padding_mode != "zeros" or conv.in_channels % (r * r):
        raise ValueError(f"unshuffle_conv needs a dense stride-1 zero-padded conv, got {conv}")
    o, c = conv.out_channels, conv.in_channels // (r * r)
    w = conv.weight.detach().view(o, c, r, r, kh, kw).permute(0, 1, 4, 2, 5, 3).reshape(o, c, r * kh, r * kw)
    out = nn.Conv2d(c, o, (r * kh, r * kw), stride=r, padding=(r * conv.padding[0], r * conv.padding[1]),
                    bias=conv.bias is not None).to(w)
    out.weight.data.copy_(w)
    if conv.bias is not None:
        out.bias.data.copy_(conv.bias.detach())
    return out


class Downsample(nn.Module):
    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.unshuffle = nn.PixelUnshuffle(2)
        self.conv = nn.Conv2d(channels * 4, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, C', H/2, W/2]``."""
        return self.conv(self.unshuffle(x))

    @torch.no_grad()
    def fuse(self) -> None:
        """Turn PixelUnshuffle + conv into one stride-2 conv on the full-resolution map (idempotent)."""
        if isinstance(self.unshuffle, nn.PixelUnshuffle):
            self.conv = unshuffle_conv(self.conv, self.unshuffle.downscale_factor)
            self.unshuffle = nn.Identity()


class Upsample(nn.Module):
    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels * 4, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, C', 2H, 2W]`` (conv, then PixelShuffle)."""
        return self.shuffle(self.conv(x))


class GatedFuse(nn.Module):
    def __init__(self, channels: int, max_gain: float = 1.0) -> None:
        super().__init__()
        self.gate = nn.Conv2d(channels * 2, channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.gain = nn.Parameter(torch.full((1, channels, 1, 1), 0.5))
        self.max_gain = max_gain
        self.gate_skip: nn.Conv2d | None = None  # set by fuse(): gate = gate(x) + gate_skip(skip)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``x`` plus the projected ``skip`` weighted by a clamped sigmoid gate; equal shapes required."""
        if x.shape != skip.shape:
            raise ValueError(f"GatedFuse needs equal shapes, got {tuple(x.shape)} and {tuple(skip.shape)}")
        logits = self.gate(torch.cat([x, skip], 1)) if self.gate_skip is None else self.gate(x) + self.gate_skip(skip)
        g = torch.sigmoid(logits) * self.gain.clamp(0.0, self.max_gain)
        return x + g * self.proj(skip)

    @torch.no_grad()
    def fuse(self) -> None:
        """Split the gate conv over ``cat([x, skip])`` into one conv per input (idempotent)."""
        if self.gate_skip is not None:
            return
        c = self.proj.in_channels
        weight = self.gate.weight
        gate = nn.Conv2d(c, weight.shape[0], 1).to(weight)
        gate.weight.copy_(weight[:, :c])
        gate.bias.copy_(self.gate.bias)
        self.gate_skip = nn.Conv2d(c, weight.shape[0], 1, bias=False).to(weight)
        self.gate_skip.weight.copy_(weight[:, c:])
        self.gate = gate
