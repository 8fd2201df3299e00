"""Band-wise channel mixing in the Haar domain: an FFT-inspired frequency mixer without FFT.

Training: ``haar_dwt`` (2x2 blocks -> LL, LH, HL, HH), an independent C x C channel mix (+ bias)
per subband, ``haar_idwt``; each band is filtered on its own, like a global filter is diagonal in
frequency. The map is linear, so ``fuse()`` rewrites it in the pixel domain as
PixelUnshuffle(2) -> one 1x1 conv (4C -> 4C) -> PixelShuffle(2), with
``W[o*4+j, c*4+i] = sum_k H[k, j] W_k[o, c] H[k, i]`` (H: the orthonormal Haar matrix), and the
unshuffle + 1x1 as one 2x2 stride-2 conv (:func:`hrx.blocks.msg.unshuffle_conv`).
Deploy ops: Conv / DepthToSpace only.
Contract: ``[B, C, H, W] -> [B, C, H, W]``, H and W even.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hrx.blocks.freq import haar_dwt, haar_idwt
from hrx.blocks.msg import unshuffle_conv


def haar_matrix() -> torch.Tensor:
    """``[4, 4]``: row k = band (LL, LH, HL, HH), column j = position in the 2x2 block, read off
    :func:`haar_dwt` applied to the four unit blocks."""
    return haar_dwt(torch.eye(4).view(4, 1, 2, 2)).reshape(4, 4).t()


class HaarBandMix(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.weight: nn.Parameter | None = nn.Parameter(torch.randn(4, channels, channels) * channels**-0.5)  # [band, out, in]
        self.bias: nn.Parameter | None = nn.Parameter(torch.zeros(4, channels))  # [band, out]
        self.pixel_mix: nn.Conv2d | None = None  # set by fuse()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> the same shape: each Haar band mixed across channels, then inverted."""
        if self.pixel_mix is not None:
            return F.pixel_shuffle(self.pixel_mix(x), 2)
        bands = haar_dwt(x)  # [B, 4, C, H/2, W/2]
        mixed = torch.einsum("koc,bkchw->bkohw", self.weight.to(x.dtype), bands)
        mixed = mixed + self.bias.to(x.dtype)[None, :, :, None, None]
        return haar_idwt(mixed)  # [B, C, H, W]

    @torch.no_grad()
    def fuse(self) -> None:
        """Replace the DWT, per-band mix and inverse DWT by one stride-2 conv and a PixelShuffle (idempotent)."""
        if self.pixel_mix is not None:
            return
        c = self.channels
        hm = haar_matrix().to(self.weight)
        w = torch.einsum("kj,koc,ki->ojci", hm, self.weight, hm).reshape(4 * c, 4 * c, 1, 1)
        b = torch.einsum("kj,ko->oj", hm, self.bias).reshape(4 * c)
        mix = nn.Conv2d(4 * c, 4 * c, 1).to(w)
        mix.weight.copy_(w)
        mix.bias.copy_(b)
        self.pixel_mix = unshuffle_conv(mix, 2)
        self.weight = None
        self.bias = None
