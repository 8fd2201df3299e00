"""Sparse mixture-of-experts routing, shared by every HRX mixture, and DetailMoE (HARMONIC-RX).

:class:`SparseMoE` holds the routing logic once; a mixture is a list of experts plus a
:class:`Router`. The router sees the features plus two texture cues of the channel mean (Sobel
gradient magnitude and 3x3 local variance), optionally a conditioning vector (a degradation
prompt), and emits per-pixel logits ``[B, E, H, W]``.

* training: top-2 routing, the two gates are the softmax probabilities (not renormalised), plus
  optional Gaussian jitter on the logits; :attr:`aux_loss` holds the Switch-style load-balancing
  loss ``E * sum_e f_e * P_e`` of the last forward.
* eval / fused: top-1 through :func:`top1_combine` (the ``hrx::MoETop1`` op at export):
  ``idx = argmax(logits)`` (ties go to the lowest index, like ``torch.argmax``) and the output is
  ``p_idx * expert_idx(x)``. Deterministic.

Every expert is evaluated densely and masked (static shapes for export); the deploy graph selects
one expert per pixel. Contract: ``[B, C, H, W] -> [B, C, H, W]`` (residual included):
``x + scale * combine(router(x), experts(x))``.

:class:`DetailMoE` (experts: RepLK large-kernel conv, dilated conv, window attention, SSM mixer) is
HARMONIC-RX's detail enhancer; HydraFusionIR's MoE-X (:mod:`hrx.blocks.moe_x`) uses the same routing.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hrx.blocks.impls import Implementations
from hrx.blocks.replk import RepLK
from hrx.blocks.ssm import SSMixer
from hrx.blocks.window_attention import WindowAttention


class DilatedConvExpert(nn.Module):
    """3x3 conv (dilation 2) -> GELU -> 3x3 conv (dilation 3): a wide, sparse receptive field."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=2, dilation=2)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=3, dilation=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two dilated 3x3 convs with GELU between; shape kept."""
        return self.conv2(F.gelu(self.conv1(x)))


class RepLKExpert(nn.Module):
    """RepLK depthwise large kernel -> GELU -> 1x1."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.lk = RepLK(channels, kernel)
        self.pw = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Re-parameterizable large-kernel depthwise conv, GELU, pointwise conv; shape kept."""
        return self.pw(F.gelu(self.lk(x)))


def texture_cues(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, 2, H, W]``: Sobel gradient magnitude and 3x3 variance of the channel mean."""
    m = x.mean(1, keepdim=True)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype)
    k = torch.stack([sobel, sobel.t()]).unsqueeze(1)  # [2, 1, 3, 3]
    g = F.conv2d(F.pad(m, (1, 1, 1, 1), mode="replicate"), k)
    grad = torch.sqrt(g.pow(2).sum(1, keepdim=True) + 1e-6)
    mp = F.pad(m, (1, 1, 1, 1), mode="replicate")
    var = (F.avg_pool2d(mp * mp, 3, 1) - F.avg_pool2d(mp, 3, 1).pow(2)).clamp_min(0.0)
    return torch.cat([grad, var], 1)


class Router(nn.Module):
    """Per-pixel expert logits from features + texture cues (+ an optional conditioning vector).

    ``x [B, C, H, W]``, ``cond [B, cond_dim]`` -> ``[B, E, H, W]``. With ``cond_dim > 0`` the
    condition shifts the hidden layer; :meth:`freeze_cond` folds a fixed condition into the bias.
    """

    def __init__(self, channels: int, num_experts: int, cond_dim: int = 0) -> None:
        super().__init__()
        hidden = max(8, channels // 2)
        self.fc1 = nn.Conv2d(channels + 2, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, num_experts, 1)
        self.cond: nn.Linear | None = nn.Linear(cond_dim, hidden) if cond_dim > 0 else None

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """Expert logits ``[B, E, H, W]`` from the features, their texture cues and, for a conditioned
        router, ``cond [B, cond_dim]``."""
        h = self.fc1(torch.cat([x, texture_cues(x)], 1))  # [B, hidden, H, W]
        if self.cond is not None:
            if cond is None:
                raise ValueError("this router is conditioned: pass cond [B, cond_dim]")
            h = h + self.cond(cond.to(h.dtype))[:, :, None, None]
        return self.fc2(F.gelu(h))  # [B, E, H, W]

    @torch.no_grad()
    def freeze_cond(self, cond: torch.Tensor) -> None:
        """Fold the fixed condition ``cond [cond_dim]`` into ``fc1``'s bias; later conds are ignored."""
        if self.cond is None:
            return
        self.fc1.bias += self.cond(cond.reshape(1, -1).to(self.fc1.bias)).reshape(-1)
        self.cond = None


def top1_combine(logits: torch.Tensor, experts: torch.Tensor, impl: str = "reference") -> torch.Tensor:
    """Deploy-time routing. ``logits [B, E, H, W]``, ``experts [B, E, C, H, W]`` -> ``[B, C, H, W]``.

    ``sum_e onehot(argmax)_e * softmax(logits)_e * experts_e``. This is the computation the
    ``hrx::MoETop1`` custom op stands for; a plugin export picks that op per module with
    :func:`use_combine_impl`.
    """
    return COMBINES[impl](logits, experts)


def top1_combine_reference(logits: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """The PyTorch implementation of :func:`top1_combine` (argmax ties go to the lowest index)."""
    probs = torch.softmax(logits.float(), dim=1)
    idx = torch.argmax(logits, dim=1, keepdim=True)  # [B, 1, H, W]
    e = torch.arange(logits.shape[1], device=logits.device).view(1, -1, 1, 1)
    gate = (e == idx).to(probs.dtype) * probs  # [B, E, H, W]
    return (gate.unsqueeze(2) * experts.float()).sum(1).to(experts.dtype)


COMBINES = Implementations("combine", "combine_impl", reference=top1_combine_reference)
register_combine_impl = COMBINES.register  # e.g. the exporter's hrx::MoETop1 custom op


def use_combine_impl(model: nn.Module, name: str) -> nn.Module:
    """Route the top-1 combine of the :class:`SparseMoE` modules of ``model`` (only those) through the
    named implementation; returns ``model``. The exporter calls it on its own deploy copy."""
    return COMBINES.use(model, SparseMoE, name)


class SparseMoE(nn.Module):
    """The routing of every mixture: top-2 + balance loss in training, top-1 in eval / after fuse."""

    def __init__(self, experts: list[nn.Module], router: Router, channels: int, jitter: float = 0.0) -> None:
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.num_experts = len(self.experts)
        self.router = router
        self.jitter = jitter
        self.scale = nn.Parameter(torch.full((1, channels, 1, 1), 0.1))
        self.aux_loss: torch.Tensor | None = None
        self.top1 = False  # set by fuse(): routing frozen to top-1 whatever the mode
        self.combine_impl = "reference"  # a name in the combine table; see use_combine_impl

    def expert_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Every expert applied to ``x``: ``[B, E, C, H, W]``."""
        return torch.stack([e(x) for e in self.experts], dim=1)  # [B, E, C, H, W]

    def combine(self, logits: torch.Tensor, outs: torch.Tensor) -> torch.Tensor:
        """``logits [B, E, H, W]``, ``outs [B, E, C, H, W]`` -> routed ``[B, C, H, W]`` (sets aux_loss)."""
        if self.training and not self.top1:
            if self.jitter > 0:
                logits = logits + torch.randn_like(logits) * self.jitter
            probs = torch.softmax(logits.float(), dim=1)
            top = probs.topk(2, dim=1).indices  # [B, 2, H, W]
            mask = torch.zeros_like(probs).scatter_(1, top, 1.0)
            gate = (probs * mask).to(outs.dtype)
            y = (gate.unsqueeze(2) * outs).sum(1)
            frac = mask.mean(dim=(0, 2, 3)) / 2.0  # share of routed slots per expert
            self.aux_loss = self.num_experts * (frac * probs.mean(dim=(0, 2, 3))).sum()
        else:
            y = top1_combine(logits, outs, self.combine_impl)
            self.aux_loss = None
        return y

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` plus the routed expert mix, scaled; ``cond`` steers a conditioned router."""
        logits = self.router(x, cond)
        outs = self.expert_outputs(x)
        return x + self.combine(logits, outs) * self.scale

    @torch.no_grad()
    def fuse(self) -> None:
        """Freeze routing to top-1 with no jitter (what deploy runs)."""
        self.top1 = True
        self.jitter = 0.0


class DetailMoE(SparseMoE):
    def __init__(self, channels: int, heads: int, window: int, kernel: int = 7, d_state: int = 8,
                 head_dim: int = 16, chunk: int = 32, jitter: float = 0.0) -> None:
        experts = [
            RepLKExpert(channels, kernel),
            DilatedConvExpert(channels),
            WindowAttention(channels, heads, window),
            SSMixer(channels, d_state=d_state, head_dim=head_dim, chunk=chunk),
        ]
        super().__init__(experts, Router(channels, len(experts)), channels, jitter)
