"""HARMONIC-RX: hybrid restoration / super-resolution network (docs/architecture.md).

Dataflow (H, W multiples of ``size_multiple`` = 4 * window)::

    x [B, in, H, W]
    stem:        conv3x3 -> PixelUnshuffle(2) -> conv3x3           # [B, C, H/2, W/2]
    stage1:      HarmonicBlock x N1                                 # [B, C, H/2, W/2]  (skip)
    freq split:  lf, hf = FreqSplit(f1)                             # both [B, C, H/2, W/2]
    LF path:     Downsample(lf) -> HarmonicBlock x N2 -> bottleneck (SSM + WindowAttn + GatedFFN)
                 -> Upsample                                        # [B, C, H/2, W/2]
    HF path:     DetailMoE(hf) -> RepLK                             # [B, C, H/2, W/2]
    fusion:      gated_fuse(x, hf_detail); gated_skip(x, f1)
    stage3:      HarmonicBlock x N3
    head:        conv + PixelShuffle(2), conv + PixelShuffle(scale), conv -> out
    output:      head(x) + bicubic_upsample(input)                  # [B, out, H*s, W*s]

The refine conv of the head starts at zero, so an untrained model returns bicubic upscaling.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hrx.blocks.freq import FreqSplit
from hrx.blocks.gated_ffn import GatedFFN
from hrx.blocks.harmonic import harmonic_stage
from hrx.blocks.head import BicubicUpsample, ReconstructionHead
from hrx.blocks.moe import DetailMoE
from hrx.blocks.msg import Downsample, GatedFuse, Upsample, unshuffle_conv
from hrx.blocks.replk import RepLK
from hrx.blocks.ssm import SSMixer
from hrx.blocks.window_attention import WindowAttention
from hrx.models.base import RestorationModel, check_io_config, match_channels


@dataclass
class HarmonicRXConfig:
    in_channels: int = 3
    out_channels: int | None = None  # None: same as in_channels
    scale: int = 4
    dim: int = 32
    depths: tuple[int, int, int] = (2, 2, 2)
    heads: int = 2
    window: int = 8
    ssm_every: int = 2
    d_state: int = 8
    ssm_head_dim: int = 16
    chunk: int = 32
    ffn_expansion: float = 2.0
    replk_kernel: int = 7
    freq_mode: str = "haar"
    head_dim: int = 16
    moe_jitter: float = 0.0

    def __post_init__(self) -> None:
        self.depths = tuple(self.depths)
        check_io_config(self)


class HarmonicRX(RestorationModel):
    arch_family = "harmonic-rx"

    def __init__(self, config: HarmonicRXConfig) -> None:
        super().__init__()
        self.config = cfg = config
        c, c2 = cfg.dim, cfg.dim * 2
        blk = dict(ffn_expansion=cfg.ffn_expansion, d_state=cfg.d_state, ssm_head_dim=cfg.ssm_head_dim, chunk=cfg.chunk)
        self.stem = nn.Sequential(nn.Conv2d(cfg.in_channels, c, 3, padding=1), nn.PixelUnshuffle(2),
                                  nn.Conv2d(c * 4, c, 3, padding=1))
        n1, n2, n3 = cfg.depths
        self.stage1 = harmonic_stage(c, n1, cfg.heads, cfg.window, cfg.ssm_every, 0, **blk)
        self.freq = FreqSplit(cfg.freq_mode)
        self.down = Downsample(c, c2)
        self.stage2 = harmonic_stage(c2, n2, cfg.heads, cfg.window, cfg.ssm_every, n1, **blk)
        self.bottleneck_ssm = SSMixer(c2, d_state=cfg.d_state, head_dim=cfg.ssm_head_dim, chunk=cfg.chunk)
        self.bottleneck_attn = WindowAttention(c2, cfg.heads, cfg.window, shift=True)
        self.bottleneck_ffn = GatedFFN(c2, cfg.ffn_expansion)
        self.up = Upsample(c2, c)
        self.detail = DetailMoE(c, cfg.heads, cfg.window, cfg.replk_kernel, cfg.d_state, cfg.ssm_head_dim,
                                cfg.chunk, jitter=cfg.moe_jitter)
        self.detail_lk = RepLK(c, cfg.replk_kernel)
        self.hf_fuse = GatedFuse(c)
        self.skip_fuse = GatedFuse(c)
        self.stage3 = harmonic_stage(c, n3, cfg.heads, cfg.window, cfg.ssm_every, n1 + n2, **blk)
        self.head = ReconstructionHead(c, cfg.out_channels, cfg.scale, cfg.head_dim)
        self.residual = BicubicUpsample(cfg.in_channels, cfg.scale)

    # -- what the deploy tooling reads (spandrel-style descriptor) --
    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this: /2 stem, /2 down, then whole attention windows."""
        return 4 * self.config.window

    @property
    def tile_overlap(self) -> int:
        """Recommended overlap between tiles, in input pixels: one attention window at the coarsest
        scale (4 * window). The SSM mixers see the whole tile, so no finite overlap makes tiling
        exact; this one keeps seams below visibility (see the runtime's tiled-vs-whole PSNR)."""
        return self.size_multiple

    @torch.no_grad()
    def fuse(self) -> None:
        """Model-level part of ``hrx.fuse``: the stem's PixelUnshuffle + conv becomes one stride-2 conv
        (:func:`~hrx.blocks.msg.unshuffle_conv`). Idempotent."""
        if len(self.stem) == 3 and isinstance(self.stem[1], nn.PixelUnshuffle):
            self.stem = nn.Sequential(self.stem[0], unshuffle_conv(self.stem[2], self.stem[1].downscale_factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_channels, H, W]`` -> ``[B, out_channels, H * scale, W * scale]``; sides multiples of
        ``size_multiple``."""
        self.check_input(x)
        f0 = self.stem(x)  # [B, C, H/2, W/2]
        f1 = self.stage1(f0)
        lf, hf = self.freq(f1)
        y = self.stage2(self.down(lf))  # [B, 2C, H/4, W/4]
        y = y + self.bottleneck_ssm(y)
        y = self.bottleneck_attn.residual(y)  # y + attn(y)
        y = y + self.bottleneck_ffn(y)
        y = self.up(y)  # [B, C, H/2, W/2]
        hf = self.detail_lk(self.detail(hf))
        y = self.hf_fuse(y, hf)
        y = self.skip_fuse(y, f1)
        y = self.stage3(y)
        out = self.head(y)  # [B, out, H*s, W*s]
        return out + match_channels(self.residual(x), out.shape[1])
