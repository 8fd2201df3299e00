"""Real-world degradations: the "second-order" chain of Real-ESRGAN (Wang et al., ICCVW 2021), with the
milder ranges of a PSNR-trained model, and a share of clean (bicubic-only) samples.

One sample goes through::

    clean share?  -> bicubic downscale only (what :func:`hrx.data.bicubic_downscale` does)
    stage 1       -> blur (Gaussian, anisotropic, generalized Gaussian or plateau kernel) -> random resize
                     (up / down / keep, area / bilinear / bicubic) -> Gaussian or Poisson noise (colour or
                     gray) -> JPEG
    stage 2 (p)   -> the same kinds with narrower ranges; the resize is relative to the target size
    final         -> [resize to the target size + sinc filter (p)] and JPEG, in a random order

As in BasicSR, every random number of a sample is drawn first (:meth:`RealDegradation.draw`, from one
``torch.Generator``: reproducible, resumable), then plain deterministic functions apply the draw
(:func:`apply`). The ranges live in one place, :class:`RealDegradation`; the training command records
its values in the checkpoint.

For x1 (restoration) the target size is the input size: the chain still blurs, resizes and compresses,
then comes back to the original size.
"""
from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hrx.errors import HRXError

Range = tuple[float, float]
RESIZE_MODES = ("area", "bilinear", "bicubic")
KERNEL_KINDS = ("iso", "aniso", "generalized", "plateau")


@dataclass(frozen=True)
class Stage:
    """One order of the chain: probabilities and ranges of its blur, resize and noise, and its JPEG range."""

    blur_prob: float
    blur_sigma: Range  # Gaussian sigma along each axis, pixels of the image the blur is applied to
    resize_probs: tuple[float, float, float]  # up, down, keep
    resize_up: Range  # factors > 1
    resize_down: Range  # factors < 1
    noise_prob: float
    gaussian_prob: float  # else Poisson
    gaussian_sigma: Range  # 8-bit levels
    poisson_scale: Range  # photons scale: higher is noisier
    gray_noise_prob: float
    jpeg_prob: float
    jpeg_quality: Range


@dataclass(frozen=True)
class RealDegradation:
    """The ranges of the real-degradation chain (Real-ESRGAN's kinds, milder ranges: this trains an
    L1/PSNR model, not a GAN that can hallucinate through heavy damage)."""

    scale: int
    clean_share: float = 0.2  # share of samples that are only bicubic-downscaled
    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    kernel_probs: tuple[float, float, float, float] = (0.5, 0.3, 0.12, 0.08)  # KERNEL_KINDS
    generalized_beta: Range = (0.5, 4.0)
    plateau_beta: Range = (1.0, 2.0)
    first: Stage = Stage(blur_prob=0.7, blur_sigma=(0.2, 2.0), resize_probs=(0.2, 0.5, 0.3),
                         resize_up=(1.0, 1.5), resize_down=(0.5, 1.0), noise_prob=0.6, gaussian_prob=0.6,
                         gaussian_sigma=(1.0, 15.0), poisson_scale=(0.05, 1.5), gray_noise_prob=0.4,
                         jpeg_prob=0.7, jpeg_quality=(35.0, 95.0))
    second_prob: float = 0.5
    second: Stage = Stage(blur_prob=0.5, blur_sigma=(0.2, 1.0), resize_probs=(0.3, 0.4, 0.3),
                          resize_up=(1.0, 1.2), resize_down=(0.7, 1.0), noise_prob=0.4, gaussian_prob=0.6,
                          gaussian_sigma=(1.0, 10.0), poisson_scale=(0.05, 1.0), gray_noise_prob=0.4,
                          jpeg_prob=0.0, jpeg_quality=(40.0, 95.0))
    final_jpeg_prob: float = 0.8
    final_jpeg_quality: Range = (35.0, 95.0)
    sinc_prob: float = 0.3
    sinc_cutoff: Range = (math.pi / 3, math.pi)  # radians per pixel
    sinc_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)

    def __post_init__(self) -> None:
        if self.scale not in (1, 2, 3, 4):
            raise HRXError(f"scale must be 1, 2, 3 or 4, not {self.scale}")
        if not 0.0 <= self.clean_share <= 1.0:
            raise HRXError(f"clean share must be in [0, 1], not {self.clean_share}")
        for stage in (self.first, self.second):
            for lo, hi in (stage.blur_sigma, stage.resize_up, stage.resize_down, stage.gaussian_sigma,
                           stage.poisson_scale, stage.jpeg_quality):
                if lo > hi:
                    raise HRXError(f"degradation range ({lo}, {hi}) is empty")
            if not 1 <= stage.jpeg_quality[0] <= stage.jpeg_quality[1] <= 100:
                raise HRXError(f"JPEG quality range {stage.jpeg_quality} must lie in [1, 100]")

    @classmethod
    def for_scale(cls, scale: int, clean_share: float = 0.2) -> "RealDegradation":
        """The ranges used for a scale. x3 and x4 run the whole chain. At x1 and x2 the chain runs at (or
        near) the input's own resolution, where a blur or an extra down-and-up resize removes far more of
        what the model must give back: trained on those, the model learns to sharpen and to smooth
        everything and harms clean and JPEG-only photos (fine-tunes at x2 with blur in 25-50% of the crops
        fell from +1.7 to +1.0 dB and below over bicubic on clean inputs, and an x1 model made JPEG q70
        inputs 0.7 dB worse). So x1 and x2 model the damage of photos as they are stored: downscaled to
        the input size (x2, a random filter), sensor noise at that size, JPEG; a mild blur rarely."""
        if scale >= 3:
            return cls(scale, clean_share=clean_share)
        down = 1.0 / scale
        first = Stage(blur_prob=0.1, blur_sigma=(0.2, 0.6), resize_probs=(0.0, 0.8 if scale > 1 else 0.0,
                      0.2 if scale > 1 else 1.0), resize_up=(1.0, 1.0), resize_down=(down, down),
                      noise_prob=0.4, gaussian_prob=0.7, gaussian_sigma=(1.0, 10.0), poisson_scale=(0.05, 0.8),
                      gray_noise_prob=0.4, jpeg_prob=0.0, jpeg_quality=(40.0, 95.0))
        return cls(scale, clean_share=clean_share, kernel_sizes=(7, 9), first=first, second_prob=0.0,
                   second=first, final_jpeg_prob=0.85, final_jpeg_quality=(30.0, 95.0), sinc_prob=0.0)

    def as_dict(self) -> dict:
        return asdict(self)

    def draw(self, gen: torch.Generator) -> "DegradationDraw":
        """Every random number of one sample."""
        return _draw(self, gen)

    def __call__(self, hr: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """``[B, 3, H, W]`` HR crops -> ``[B, 3, H/scale, W/scale]`` 8-bit inputs, each with its own draw."""
        return torch.stack([apply(im, self.draw(gen), self.scale) for im in hr])


# -- the draw ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Blur:
    kind: str
    size: int
    sigma_x: float
    sigma_y: float
    angle: float
    beta: float = 2.0


@dataclass(frozen=True)
class Noise:
    gaussian: bool
    level: float  # sigma in 8-bit levels, or the Poisson scale
    gray: bool
    seed: int


@dataclass(frozen=True)
class StageDraw:
    blur: Blur | None
    resize: float  # factor (1.0: none)
    resize_mode: str
    noise: Noise | None
    jpeg: int  # quality, 0: none


@dataclass(frozen=True)
class DegradationDraw:
    clean: bool
    stages: tuple[StageDraw, ...] = ()
    final_mode: str = "bicubic"
    sinc_cutoff: float = 0.0  # 0: no sinc filter
    sinc_size: int = 0
    final_jpeg: int = 0
    jpeg_first: bool = False


def _u(gen: torch.Generator, r: Range) -> float:
    return r[0] + (r[1] - r[0]) * float(torch.rand((), generator=gen))


def _p(gen: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=gen)) < p


def _pick(gen: torch.Generator, items: tuple, probs: tuple[float, ...] | None = None):
    if probs is None:
        return items[int(torch.randint(0, len(items), (), generator=gen))]
    return items[int(torch.multinomial(torch.tensor(probs, dtype=torch.float64), 1, generator=gen))]


def _draw_blur(cfg: RealDegradation, stage: Stage, gen: torch.Generator) -> Blur | None:
    if not _p(gen, stage.blur_prob):
        return None
    kind = _pick(gen, KERNEL_KINDS, cfg.kernel_probs)
    size = _pick(gen, cfg.kernel_sizes)
    sx = _u(gen, stage.blur_sigma)
    sy = sx if kind == "iso" else _u(gen, stage.blur_sigma)
    angle = 0.0 if kind == "iso" else _u(gen, (-math.pi, math.pi))
    beta = (_u(gen, cfg.generalized_beta) if kind == "generalized"
            else _u(gen, cfg.plateau_beta) if kind == "plateau" else 2.0)
    return Blur(kind, int(size), sx, sy, angle, beta)


def _draw_stage(cfg: RealDegradation, stage: Stage, gen: torch.Generator) -> StageDraw:
    blur = _draw_blur(cfg, stage, gen)
    way = _pick(gen, ("up", "down", "keep"), stage.resize_probs)
    factor = _u(gen, stage.resize_up) if way == "up" else _u(gen, stage.resize_down) if way == "down" else 1.0
    mode = _pick(gen, RESIZE_MODES)
    noise = None
    if _p(gen, stage.noise_prob):
        gaussian = _p(gen, stage.gaussian_prob)
        level = _u(gen, stage.gaussian_sigma if gaussian else stage.poisson_scale)
        noise = Noise(gaussian, level, _p(gen, stage.gray_noise_prob), int(torch.randint(0, 2**31 - 1, (), generator=gen)))
    jpeg = round(_u(gen, stage.jpeg_quality)) if _p(gen, stage.jpeg_prob) else 0
    return StageDraw(blur, factor, mode, noise, jpeg)


def _draw(cfg: RealDegradation, gen: torch.Generator) -> DegradationDraw:
    if _p(gen, cfg.clean_share):
        return DegradationDraw(clean=True)
    stages = [_draw_stage(cfg, cfg.first, gen)]
    if _p(gen, cfg.second_prob):
        stages.append(_draw_stage(cfg, cfg.second, gen))
    final_mode = _pick(gen, RESIZE_MODES)
    sinc = _p(gen, cfg.sinc_prob)
    cutoff = _u(gen, cfg.sinc_cutoff) if sinc else 0.0
    sinc_size = int(_pick(gen, cfg.sinc_sizes)) if sinc else 0
    jpeg = round(_u(gen, cfg.final_jpeg_quality)) if _p(gen, cfg.final_jpeg_prob) else 0
    return DegradationDraw(False, tuple(stages), final_mode, cutoff, sinc_size, jpeg, _p(gen, 0.5))


# -- deterministic operations ------------------------------------------------------------------------

def blur_kernel(b: Blur) -> torch.Tensor:
    """``[size, size]`` kernel summing to 1: a (rotated, anisotropic) Gaussian, a generalized Gaussian
    ``exp(-(d/2)^beta)`` or a plateau ``1 / (1 + d^beta)``, ``d`` the Mahalanobis distance."""
    r = b.size // 2
    y, x = torch.meshgrid(torch.arange(-r, r + 1, dtype=torch.float64), torch.arange(-r, r + 1, dtype=torch.float64),
                          indexing="ij")
    c, s = math.cos(b.angle), math.sin(b.angle)
    u, v = c * x + s * y, -s * x + c * y
    d2 = (u / b.sigma_x) ** 2 + (v / b.sigma_y) ** 2
    if b.kind in ("iso", "aniso"):
        k = torch.exp(-0.5 * d2)
    elif b.kind == "generalized":
        k = torch.exp(-0.5 * d2.pow(b.beta / 2))
    else:
        k = 1.0 / (1.0 + d2.pow(b.beta))
    return (k / k.sum()).float()


def sinc_kernel(cutoff: float, size: int) -> torch.Tensor:
    """``[size, size]`` circular low-pass (jinc) kernel with ``cutoff`` in radians per pixel: the ringing
    and overshoot of resampling filters."""
    r = size // 2
    y, x = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
    d = np.hypot(x, y)
    from scipy.special import j1

    with np.errstate(divide="ignore", invalid="ignore"):
        k = cutoff * j1(cutoff * d) / (2 * np.pi * d)
    k[r, r] = cutoff**2 / (4 * np.pi)
    k = torch.from_numpy(k / k.sum()).float()
    return k


def filter2d(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``[C, H, W]`` convolved with ``kernel [k, k]`` per channel, reflect padding."""
    k = kernel.shape[-1]
    pad = k // 2
    c = img.shape[0]
    mode = "reflect" if min(img.shape[-2:]) > pad else "replicate"
    t = F.pad(img.unsqueeze(0), (pad, pad, pad, pad), mode=mode)
    return F.conv2d(t, kernel.to(img.dtype).expand(c, 1, k, k), groups=c)[0]


def resize(img: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """``[C, H, W]`` to ``size``; bilinear and bicubic antialiased when shrinking, as photo software does."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    t = img.unsqueeze(0)
    if mode == "area":
        out = F.interpolate(t, size=size, mode="area") if size[0] <= img.shape[-2] else \
            F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    else:
        out = F.interpolate(t, size=size, mode=mode, align_corners=False, antialias=True)
    return out[0]


def add_noise(img: torch.Tensor, noise: Noise) -> torch.Tensor:
    """Gaussian noise (sigma in 8-bit levels) or Poisson noise (``level`` scales the photon noise), per
    channel or the same for all channels (gray)."""
    g = torch.Generator().manual_seed(noise.seed)
    shape = (1, *img.shape[1:]) if noise.gray else img.shape
    if noise.gaussian:
        n = torch.randn(shape, generator=g) * (noise.level / 255.0)
    else:
        base = img.mean(0, keepdim=True) if noise.gray else img
        photons = 255.0 / max(noise.level, 1e-3)  # level 1: 255 photons at white
        n = (torch.poisson(base.clamp(0, 1) * photons, generator=g) / photons - base.clamp(0, 1))
    return img + n.expand_as(img)


def jpeg(img: torch.Tensor, quality: int) -> torch.Tensor:
    """``[3, H, W]`` in [0, 1] through a JPEG encode and decode at ``quality`` (Pillow, 4:2:0 as cameras
    and web pages store photos)."""
    from PIL import Image

    arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        out = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(out.copy()).permute(2, 0, 1).float().div_(255.0)


def _quantize(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0.0, 1.0).mul(255.0).round().div(255.0)


def _apply_stage(img: torch.Tensor, st: StageDraw, base: tuple[int, int]) -> torch.Tensor:
    if st.blur is not None:
        img = filter2d(img, blur_kernel(st.blur))
    if st.resize != 1.0:
        size = (max(8, round(base[0] * st.resize)), max(8, round(base[1] * st.resize)))
        img = resize(img, size, st.resize_mode)
    if st.noise is not None:
        img = add_noise(img, st.noise)
    img = img.clamp(0, 1)
    if st.jpeg:
        img = jpeg(img, st.jpeg)
    return img


def apply(hr: torch.Tensor, d: DegradationDraw, scale: int) -> torch.Tensor:
    """``hr [3, H, W]`` (H, W multiples of ``scale``) -> the degraded input ``[3, H/scale, W/scale]``,
    8-bit quantised. Deterministic: all randomness is in ``d``."""
    from hrx.data import bicubic_downscale

    h, w = hr.shape[-2:]
    target = (h // scale, w // scale)
    if d.clean:
        return bicubic_downscale(hr.unsqueeze(0), scale)[0]
    img = hr
    for i, st in enumerate(d.stages):
        img = _apply_stage(img, st, (h, w) if i == 0 else target)

    def back(x: torch.Tensor) -> torch.Tensor:
        x = resize(x, target, d.final_mode)
        return filter2d(x, sinc_kernel(d.sinc_cutoff, d.sinc_size)) if d.sinc_cutoff else x

    if d.jpeg_first and d.final_jpeg:
        img = back(jpeg(img, d.final_jpeg))
    else:
        img = back(img)
        if d.final_jpeg:
            img = jpeg(img, d.final_jpeg)
    return _quantize(img)


# -- evaluation conditions ---------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalCondition:
    """A fixed degradation applied to the bicubic-downscaled validation input (the quality table's
    columns): Gaussian noise (8-bit sigma, seeded) then JPEG at ``jpeg`` (0: none)."""

    name: str
    jpeg: int = 0
    noise: float = 0.0

    def __call__(self, lr: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """``[B, 3, h, w]`` 8-bit LR -> degraded LR."""
        out = lr
        if self.noise:
            g = torch.Generator().manual_seed(seed)
            out = _quantize(out + torch.randn(out.shape, generator=g) * (self.noise / 255.0))
        if self.jpeg:
            out = torch.stack([jpeg(im, self.jpeg) for im in out])
        return out


EVAL_CONDITIONS: tuple[EvalCondition, ...] = (
    EvalCondition("clean"),
    EvalCondition("jpeg40", jpeg=40),
    EvalCondition("jpeg70", jpeg=70),
    EvalCondition("noise6+jpeg80", jpeg=80, noise=6.0),
)
