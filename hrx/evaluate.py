"""Evaluation against bicubic: PSNR and SSIM on the Y channel, border of ``scale`` pixels cropped.

Protocol (the usual SR one, and the quality bar of the bundled models):

1. HR image cropped to a multiple of ``scale`` (bottom/right);
2. LR input = :func:`hrx.data.bicubic_downscale` (antialiased bicubic, 8-bit);
3. baseline = :func:`hrx.data.bicubic_upscale` of the LR (the interpolation of the model's own
   global residual); model = the network on the LR, padded at the bottom/right by edge replication to
   a multiple of ``model.size_multiple`` and cropped back (edge replication is what the bicubic clamp
   does, so an untrained model reproduces the baseline exactly);
4. both outputs clamped and rounded to 8 bits; Y = ITU-R BT.601 luma in [16, 235];
   ``scale`` pixels cropped at every border; PSNR with peak 255; SSIM with an 11x11 Gaussian window
   (sigma 1.5), as :func:`hrx.losses.ssim`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from hrx.data import Degradation, bicubic_downscale, bicubic_upscale, degrade, mod_crop, quantize
from hrx.losses import ssim
from hrx.metrics import Y_OFFSET, Y_WEIGHTS, psnr_y

if TYPE_CHECKING:
    from hrx.degradations import EvalCondition


@dataclass(frozen=True)
class EvalSummary:
    """Bicubic and model scores (of one image, or means over the images)."""

    psnr_bicubic: float
    psnr_model: float
    ssim_bicubic: float
    ssim_model: float

    @property
    def gain(self) -> float:
        """Mean PSNR of the model minus that of bicubic, in dB."""
        return self.psnr_model - self.psnr_bicubic


@dataclass(frozen=True)
class EvalRow(EvalSummary):
    image: str = ""

    def as_dict(self) -> dict[str, float | str]:
        """The row as a dict (``image`` first, ``gain`` last)."""
        d = asdict(self)
        return dict(image=d.pop("image"), **d, gain=self.gain)


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` RGB in [0, 1] -> ``[B, 1, H, W]`` BT.601 luma in [16, 235] (float64)."""
    w = torch.tensor(Y_WEIGHTS, dtype=torch.float64, device=img.device).view(1, 3, 1, 1)
    return (img.double() * w).sum(1, keepdim=True) + Y_OFFSET


def _crop_border(img: torch.Tensor, border: int) -> torch.Tensor:
    return img[..., border:img.shape[-2] - border, border:img.shape[-1] - border] if border > 0 else img


def ssim_y(pred: torch.Tensor, target: torch.Tensor, border: int) -> float:
    """SSIM between the Y channels (8-bit rounded, ``border`` cropped, data range 255)."""
    a = _crop_border(rgb_to_y(quantize(pred)), border)
    b = _crop_border(rgb_to_y(quantize(target)), border)
    return float(ssim(a, b, data_range=255.0))


@torch.no_grad()
def run_padded(model: nn.Module, lr: torch.Tensor) -> torch.Tensor:
    """Run ``model`` on ``lr [B, C, h, w]`` of any size: edge-pad bottom/right to ``size_multiple``,
    then crop the output back to ``[B, C, h*scale, w*scale]``."""
    m, s = int(model.size_multiple), int(model.scale)
    h, w = lr.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    x = F.pad(lr, (0, pw, 0, ph), mode="replicate") if ph or pw else lr
    return model(x)[..., : h * s, : w * s]


@torch.no_grad()
def evaluate_image(model: nn.Module, name: str, hr: torch.Tensor, scale: int,
                   deg: Degradation | None = None, gen: torch.Generator | None = None,
                   condition: EvalCondition | None = None) -> EvalRow:
    """One row: ``hr [3, H, W]`` (or ``[1, 3, H, W]``) in [0, 1]. ``deg`` adds the restoration
    degradations (seeded by ``gen``); ``condition`` degrades the bicubic-downscaled input in a fixed way
    (:data:`hrx.degradations.EVAL_CONDITIONS`); default: bicubic downscale only. The baseline is
    bicubic of the same (degraded) input; at x1 it is the input itself."""
    device = next(model.parameters()).device
    hr = mod_crop(hr if hr.dim() == 4 else hr.unsqueeze(0), scale).to(device)
    if condition is not None:
        lr = condition(bicubic_downscale(hr.cpu(), scale)).to(device)
    elif deg is None or (deg.blur == 0 and deg.noise == 0 and deg.jpeg == 0):
        lr = bicubic_downscale(hr, scale)
    else:
        lr = degrade(hr.cpu(), deg, gen or torch.Generator().manual_seed(0)).to(device)
    base = bicubic_upscale(lr, scale)
    out = run_padded(model, lr)
    return EvalRow(psnr_y(base, hr, scale), psnr_y(out, hr, scale), ssim_y(base, hr, scale), ssim_y(out, hr, scale),
                   image=name)


def evaluate(model: nn.Module, images: list[tuple[str, torch.Tensor]], scale: int,
             deg: Degradation | None = None, condition: EvalCondition | None = None) -> list[EvalRow]:
    """Rows ``(image, bicubic PSNR-Y, model PSNR-Y, SSIM ...)`` for ``[(name, hr [3, H, W])]``.
    The model is put in eval mode and left there."""
    model.eval()
    gen = torch.Generator().manual_seed(0)
    return [evaluate_image(model, name, hr, scale, deg, gen, condition) for name, hr in images]


def summarize(rows: list[EvalRow]) -> EvalSummary:
    """Means of the rows' PSNR and SSIM, model and bicubic."""
    n = max(1, len(rows))
    return EvalSummary(sum(r.psnr_bicubic for r in rows) / n, sum(r.psnr_model for r in rows) / n,
                       sum(r.ssim_bicubic for r in rows) / n, sum(r.ssim_model for r in rows) / n)


def format_table(rows: list[EvalRow]) -> str:
    """A markdown table of the rows plus their mean."""
    lines = ["| image | bicubic PSNR-Y | HRX PSNR-Y | gain | bicubic SSIM-Y | HRX SSIM-Y |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.image} | {r.psnr_bicubic:.2f} | {r.psnr_model:.2f} | {r.gain:+.2f} | "
                     f"{r.ssim_bicubic:.4f} | {r.ssim_model:.4f} |")
    s = summarize(rows)
    lines.append(f"| **mean** | {s.psnr_bicubic:.2f} | {s.psnr_model:.2f} | {s.gain:+.2f} | "
                 f"{s.ssim_bicubic:.4f} | {s.ssim_model:.4f} |")
    return "\n".join(lines)
