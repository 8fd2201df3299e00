"""HydraFusionIR: restoration / super-resolution by frequency split, MSG U-Net and MoE-X
(docs/architecture.md), built from the HRX blocks.

Dataflow (H, W multiples of ``size_multiple``; widths C, 2C, 4C at H, H/2, H/4 for 3 scales)::

    x [B, in, H, W]                                        in = 1, 3 or 4 channels
    stem:         conv3x3                                  # F0 [B, C, H, W]
    freq gate:    lf, hf = FreqSplitGate(F0)               # lf = (1-g)*lowpass(F0), hf = g*(F0 - lowpass(F0))
    MSG encoder:  stage i: [Downsample] -> HydraBlock x N_i (NAF + RepLK; WindowAttn + GatedFFN in
                  stages 2-3) -> [MoE-X at stage 3]        # skip_i [B, C*2^(i-1), H/2^(i-1), W/2^(i-1)]
    bottleneck:   HydraBlock (NAF + RepLK + WindowAttn + GatedFFN) -> x + GlobalSummaryTokens(x)
                  -> MoE-X                                 # [B, 4C, H/4, W/4]
    MSG decoder:  stage i: [Upsample] -> GatedFuse(skip_i) -> ConvGate -> HydraBlock x M_i
                                                           # y [B, C, H, W]
    HF refiner:   GatedFuse(hf, y) -> DetailBlock x R (band mix + noise in texture mode)
    fusion:       z = GatedFuse(y, hf)                     # AdaptiveGate([LF, HF])
    head:         UpscaleHead(z) + bicubic(x)              # [B, out, H*s, W*s]

The MoE-X routers see the degradation prompt when ``prompt_dim > 0``: ``forward(x, prompt)``, or
the ``prompt`` buffer (:meth:`HydraFusionIR.set_prompt`) when none is given. Export calls
``forward(x)``, so the buffer's value is frozen in; ``hrx.fuse`` folds it into the routers.
The last conv of the head starts at zero: an untrained model returns bicubic upscaling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from hrx.blocks.conv_gate import ConvGate
from hrx.blocks.detail import DetailBlock
from hrx.blocks.freq_gate import FreqSplitGate
from hrx.blocks.head import BicubicUpsample
from hrx.blocks.hydra_block import HydraBlock
from hrx.blocks.moe import SparseMoE
from hrx.blocks.moe_x import MoEX
from hrx.blocks.msg import Downsample, GatedFuse, Upsample
from hrx.blocks.noise import NoiseInjection
from hrx.blocks.summary_tokens import GlobalSummaryTokens
from hrx.blocks.upscale_head import UpscaleHead
from hrx.models.base import RestorationModel, check_io_config, match_channels


@dataclass
class HydraConfig:
    in_channels: int = 3
    out_channels: int | None = None  # None: same as in_channels
    scale: int = 4
    dim: int = 32  # width at full resolution; encoder stage i (1-based) has dim * 2**(i-1)
    enc_depths: tuple[int, ...] = (2, 3, 4)  # blocks per encoder stage, full resolution first
    dec_depths: tuple[int, ...] = (4, 3, 2)  # blocks per decoder stage, deepest first
    heads: tuple[int, ...] = (1, 2, 4)  # attention heads per stage (the bottleneck uses the last)
    attention_stages: tuple[int, ...] = (2, 3)  # 1-based stages with WindowAttention + GatedFFN
    moe_stages: tuple[int, ...] = (3,)  # 1-based encoder stages that end with MoE-X
    moe_bottleneck: bool = True
    moe_jitter: float = 0.0
    window: int = 8
    kernel: int = 7  # RepLK kernel of the trunk and of the deblur expert
    ffn_expansion: float = 2.0
    summary_tokens: int = 8  # global summary tokens at the bottleneck; 0 disables
    fsg_kernel: int = 5  # low-pass kernel of the frequency separation gate
    refiner_blocks: int = 2
    texture_mode: bool = False  # GAN texture mode: noise injection in the HF refiner while training
    prompt_dim: int = 0  # degradation prompt length; 0 disables conditioning
    head_dim: int = 32

    def __post_init__(self) -> None:
        for name in ("enc_depths", "dec_depths", "heads", "attention_stages", "moe_stages"):
            setattr(self, name, tuple(getattr(self, name)))
        check_io_config(self)
        n = len(self.enc_depths)
        if n < 1 or len(self.dec_depths) != n or len(self.heads) != n:
            raise ValueError("enc_depths, dec_depths and heads need one entry per scale")
        if any(not 1 <= s <= n for s in (*self.attention_stages, *self.moe_stages)):
            raise ValueError(f"attention_stages and moe_stages are 1-based stage numbers up to {n}")
        if self.prompt_dim < 0 or self.summary_tokens < 0:
            raise ValueError("prompt_dim and summary_tokens must be >= 0")
        if self.prompt_dim and not (self.moe_stages or self.moe_bottleneck):
            raise ValueError("prompt_dim > 0 conditions the MoE-X routers: enable moe_stages or moe_bottleneck")

    @property
    def num_scales(self) -> int:
        """Number of encoder scales."""
        return len(self.enc_depths)

    def width(self, stage: int) -> int:
        """Channels of the 1-based ``stage``."""
        return self.dim * 2 ** (stage - 1)


def _blocks(cfg: HydraConfig, stage: int, depth: int) -> nn.Sequential:
    """``depth`` HydraBlocks of ``stage``; shifted windows on odd blocks."""
    attention = stage in cfg.attention_stages
    return nn.Sequential(*[
        HydraBlock(cfg.width(stage), cfg.kernel, attention, cfg.heads[stage - 1], cfg.window, shift=i % 2 == 1,
                   ffn_expansion=cfg.ffn_expansion)
        for i in range(depth)
    ])


class EncoderStage(nn.Module):
    """``[Downsample] -> HydraBlock x depth -> [MoE-X]``: ``[B, C/2, 2h, 2w] -> [B, C, h, w]``
    (stage 1: ``[B, C, H, W] -> [B, C, H, W]``)."""

    def __init__(self, cfg: HydraConfig, stage: int) -> None:
        super().__init__()
        c = cfg.width(stage)
        self.down = Downsample(cfg.width(stage - 1), c) if stage > 1 else None
        self.blocks = _blocks(cfg, stage, cfg.enc_depths[stage - 1])
        self.moe = MoEX(c, cfg.kernel, cfg.prompt_dim, cfg.moe_jitter) if stage in cfg.moe_stages else None

    def forward(self, x: torch.Tensor, prompt: torch.Tensor | None) -> torch.Tensor:
        """Downsample (all but the first stage), then the stage's blocks; ``prompt`` steers the MoE-X router."""
        if self.down is not None:
            x = self.down(x)
        x = self.blocks(x)
        return self.moe(x, prompt) if self.moe is not None else x


class Bottleneck(nn.Module):
    """``HydraBlock`` (NAF + RepLK + WindowAttn + GatedFFN) ``-> x + GlobalSummaryTokens(x) -> MoE-X``.
    ``[B, C, h, w] -> [B, C, h, w]``."""

    def __init__(self, cfg: HydraConfig) -> None:
        super().__init__()
        n = cfg.num_scales
        c = cfg.width(n)
        self.block = HydraBlock(c, cfg.kernel, True, cfg.heads[-1], cfg.window, shift=True,
                                ffn_expansion=cfg.ffn_expansion)
        self.summary = GlobalSummaryTokens(c, cfg.summary_tokens, cfg.heads[-1]) if cfg.summary_tokens else None
        self.moe = MoEX(c, cfg.kernel, cfg.prompt_dim, cfg.moe_jitter) if cfg.moe_bottleneck else None

    def forward(self, x: torch.Tensor, prompt: torch.Tensor | None) -> torch.Tensor:
        """The bottleneck block, summary tokens and MoE-X at the lowest scale."""
        x = self.block(x)
        if self.summary is not None:
            x = x + self.summary(x)
        return self.moe(x, prompt) if self.moe is not None else x


class DecoderStage(nn.Module):
    """``[Upsample] -> GatedFuse(skip) -> ConvGate -> HydraBlock x depth``:
    ``[B, 2C, h/2, w/2], skip [B, C, h, w] -> [B, C, h, w]`` (deepest stage: no upsampling)."""

    def __init__(self, cfg: HydraConfig, stage: int) -> None:
        super().__init__()
        c = cfg.width(stage)
        self.up = Upsample(cfg.width(stage + 1), c) if stage < cfg.num_scales else None
        self.skip_fuse = GatedFuse(c)
        self.gate = ConvGate(c)
        self.blocks = _blocks(cfg, stage, cfg.dec_depths[cfg.num_scales - stage])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Upsample (all but the last stage), fuse the gated skip, then the stage's blocks."""
        if self.up is not None:
            x = self.up(x)
        return self.blocks(self.gate(self.skip_fuse(x, skip)))


class HFRefiner(nn.Module):
    """``GatedFuse(hf, structure) -> DetailBlock x n``: the HF band, told about the restored
    structure, refined by GAN-friendly detail blocks. ``[B, C, H, W] x 2 -> [B, C, H, W]``."""

    def __init__(self, cfg: HydraConfig) -> None:
        super().__init__()
        self.context = GatedFuse(cfg.dim)
        self.blocks = nn.Sequential(*[DetailBlock(cfg.dim, cfg.texture_mode) for _ in range(cfg.refiner_blocks)])

    def forward(self, hf: torch.Tensor, structure: torch.Tensor) -> torch.Tensor:
        """Refine the high band ``hf`` guided by the low band's ``structure``."""
        return self.blocks(self.context(hf, structure))


class HydraFusionIR(RestorationModel):
    arch_family = "hydra-fusion-ir"

    def __init__(self, config: HydraConfig) -> None:
        super().__init__()
        self.config = cfg = config
        n, c = cfg.num_scales, cfg.dim
        self.stem = nn.Conv2d(cfg.in_channels, c, 3, padding=1)
        self.freq_gate = FreqSplitGate(c, cfg.fsg_kernel)
        self.encoder = nn.ModuleList([EncoderStage(cfg, i) for i in range(1, n + 1)])
        self.bottleneck = Bottleneck(cfg)
        self.decoder = nn.ModuleList([DecoderStage(cfg, i) for i in range(n, 0, -1)])
        self.hf_refiner = HFRefiner(cfg)
        self.band_fuse = GatedFuse(c)
        self.head = UpscaleHead(c, cfg.out_channels, cfg.scale, cfg.head_dim)
        self.residual = BicubicUpsample(cfg.in_channels, cfg.scale)
        self.prompt: torch.Tensor | None
        self.register_buffer("prompt", torch.zeros(cfg.prompt_dim) if cfg.prompt_dim else None)
        self.prompt_folded = False  # set by fuse(): the routers hold the prompt

    # -- what the deploy tooling reads (spandrel-style descriptor) --
    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this: whole attention windows at every attention scale,
        even sides for the Haar band mix (full resolution) and MoE-X's artifact expert."""
        cfg, n = self.config, self.config.num_scales
        m = 2
        for stage in (*cfg.attention_stages, n):  # the bottleneck (scale n) has attention
            m = math.lcm(m, cfg.window * 2 ** (stage - 1))
        for stage in (*cfg.moe_stages, *((n,) if cfg.moe_bottleneck else ())):
            m = math.lcm(m, 2**stage)
        return m

    @property
    def tile_overlap(self) -> int:
        """Recommended overlap between tiles, in input pixels. The summary tokens see the whole
        tile, so overlap hides seams rather than making tiling exact."""
        return max(16, self.size_multiple)

    # -- conditioning and modes --
    @torch.no_grad()
    def set_prompt(self, prompt: torch.Tensor | list[float]) -> None:
        """Freeze the degradation prompt used when ``forward`` gets none (and by export)."""
        if self.prompt is None:
            raise ValueError("this model has no prompt conditioning (prompt_dim=0)")
        if self.prompt_folded:
            raise ValueError("the prompt was folded into the routers by fuse(); set it before hrx.fuse")
        p = torch.as_tensor(prompt, dtype=self.prompt.dtype, device=self.prompt.device).reshape(-1)
        if p.numel() != self.config.prompt_dim:
            raise ValueError(f"prompt needs {self.config.prompt_dim} values, got {p.numel()}")
        self.prompt.copy_(p)

    def set_texture_mode(self, on: bool) -> None:
        """GAN texture mode: noise injection in the HF refiner, while training only."""
        self.config.texture_mode = bool(on)
        for m in self.modules():
            if isinstance(m, NoiseInjection):
                m.enabled = bool(on)

    def _condition(self, x: torch.Tensor, prompt: torch.Tensor | None) -> torch.Tensor | None:
        """``[B, prompt_dim]`` for the routers, or None without conditioning."""
        if prompt is not None and (self.prompt is None or self.prompt_folded):
            raise ValueError("this model takes no prompt (prompt_dim=0, or the prompt was frozen by fuse())")
        if self.prompt is None or self.prompt_folded:
            return None
        p = self.prompt if prompt is None else prompt.to(x.dtype)
        if p.shape[-1] != self.config.prompt_dim or p.dim() > 2:
            raise ValueError(f"prompt must be [{self.config.prompt_dim}] or [B, {self.config.prompt_dim}], "
                             f"got {tuple(p.shape)}")
        return p.reshape(-1, self.config.prompt_dim).expand(x.shape[0], -1)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor | None = None) -> torch.Tensor:
        """``[B, in_channels, H, W]`` -> ``[B, out_channels, H * scale, W * scale]``; ``prompt`` overrides the
        frozen degradation prompt."""
        self.check_input(x)
        p = self._condition(x, prompt)  # [B, P] or None
        f0 = self.stem(x)  # [B, C, H, W]
        lf, hf = self.freq_gate(f0)  # [B, C, H, W] each
        skips = []
        y = lf
        for stage in self.encoder:  # H -> H/2 -> H/4; C -> 2C -> 4C
            y = stage(y, p)
            skips.append(y)
        y = self.bottleneck(y, p)  # [B, 4C, H/4, W/4]
        for stage, skip in zip(self.decoder, reversed(skips)):  # H/4 -> H/2 -> H
            y = stage(y, skip)  # y: [B, C, H, W] at the end (LF / structure path)
        hf = self.hf_refiner(hf, y)  # [B, C, H, W]
        z = self.band_fuse(y, hf)  # AdaptiveGate([LF, HF])
        out = self.head(z)  # [B, out, H*s, W*s]
        return out + match_channels(self.residual(x), out.shape[1])

    @torch.no_grad()
    def fuse(self) -> None:
        """Model-level part of ``hrx.fuse(model)`` (which fuses the blocks first): fold the frozen
        prompt into the MoE-X routers. Idempotent."""
        if self.prompt is not None and not self.prompt_folded:
            for m in self.modules():
                if isinstance(m, SparseMoE):
                    m.router.freeze_cond(self.prompt)
            self.prompt_folded = True

