"""Training data: image sources, a fixed by-image train/validation split, random crops and the
HR -> LR degradation.

* Sources: a folder of images (searched recursively), or, by default, the natural photos that ship
  inside scikit-image (:data:`SKIMAGE_PHOTOS`, files read straight from ``skimage/data``, nothing
  is downloaded).
* Split: by image, never by crop. Each image's rank is ``sha256(f"{seed}:{name}")``; the lowest
  ranks are the validation images. The split depends only on the names and the seed, not on the
  listing order, and it is recorded in the checkpoint.
* Degradation (:func:`degrade`): optional Gaussian blur, then :func:`bicubic_downscale` (antialiased
  bicubic, quantised to 8 bits; the same function builds the evaluation inputs), then optional
  Gaussian noise and JPEG (for restoration, x1). Every random draw comes from one
  ``torch.Generator``, so a run is reproducible and its state can be saved for ``--resume``.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from hrx.errors import HRXError
from hrx.paths import IMAGE_SUFFIXES, image_files

if TYPE_CHECKING:
    from hrx.degradations import RealDegradation


# name -> file in skimage/data. Only photos that are shipped in the wheel (no download on demand).
# motorcycle_right is left out: it is the stereo twin of motorcycle_left and would leak across
# the split. Synthetic and document images (chessboard, logo, text, page, phantom) are left out.
SKIMAGE_PHOTOS: tuple[tuple[str, str], ...] = (
    ("astronaut", "astronaut.png"),
    ("brick", "brick.png"),
    ("camera", "camera.png"),
    ("cell", "cell.png"),
    ("chelsea", "chelsea.png"),
    ("coffee", "coffee.png"),
    ("coins", "coins.png"),
    ("grass", "grass.png"),
    ("gravel", "gravel.png"),
    ("hubble_deep_field", "hubble_deep_field.jpg"),
    ("immunohistochemistry", "ihc.png"),
    ("moon", "moon.png"),
    ("motorcycle_left", "motorcycle_left.png"),
    ("retina", "retina.jpg"),
    ("rocket", "rocket.jpg"),
)
SKIMAGE_SOURCE = "skimage"


@dataclass(frozen=True)
class ImageRecord:
    """One source image: a stable name (used by the split) and its file."""

    name: str
    path: Path


@dataclass(frozen=True)
class DataSplit:
    train: tuple[ImageRecord, ...]
    val: tuple[ImageRecord, ...]

    def names(self) -> dict[str, list[str]]:
        return {"train": [r.name for r in self.train], "val": [r.name for r in self.val]}


@dataclass(frozen=True)
class Degradation:
    """What turns an HR crop into the model input. ``blur``, ``noise``: the largest Gaussian sigma
    (pixels, and 8-bit levels); each crop draws its own uniformly in ``[0, max]``. ``jpeg``: the lowest
    JPEG quality (0 = off); each crop draws a quality in ``[jpeg, 95]``."""

    scale: int
    blur: float = 0.0
    noise: float = 0.0
    jpeg: int = 0

    def __post_init__(self) -> None:
        if self.scale not in (1, 2, 3, 4):
            raise HRXError(f"scale must be 1, 2, 3 or 4, not {self.scale}")
        if self.blur < 0 or self.noise < 0:
            raise HRXError("blur and noise must be >= 0")
        if not (self.jpeg == 0 or 1 <= self.jpeg <= 95):
            raise HRXError(f"jpeg quality must be 0 (off) or 1..95, not {self.jpeg}")


# -- sources -------------------------------------------------------------------------------------

def skimage_data_dir() -> Path:
    try:
        import skimage
    except ImportError:
        raise HRXError("the default training photos come from scikit-image, which is not installed; "
                       "pip install 'hrx[data]' or pass --data DIR") from None
    return Path(skimage.__file__).parent / "data"


def skimage_photos() -> list[ImageRecord]:
    """The bundled scikit-image photos that are present in this install."""
    root = skimage_data_dir()
    records = [ImageRecord(name, root / fname) for name, fname in SKIMAGE_PHOTOS if (root / fname).is_file()]
    if len(records) < 2:
        raise HRXError(f"{root}: fewer than 2 of scikit-image's bundled photos found; pass --data DIR")
    return records


def folder_images(folder: Path) -> list[ImageRecord]:
    """Every image file under ``folder`` (recursive), named by its path relative to the folder."""
    files = image_files(folder, what="data", option="--data")
    if len(files) < 2:
        raise HRXError(f"{folder}: needs at least 2 images ({', '.join(IMAGE_SUFFIXES)}) for a train/val split, "
                       f"found {len(files)}")
    return [ImageRecord(p.relative_to(folder).as_posix(), p) for p in files]


def list_images(data: str | Path | None) -> list[ImageRecord]:
    """``None`` or ``"skimage"``: scikit-image's bundled photos; otherwise a folder."""
    if data is None or str(data) == SKIMAGE_SOURCE:
        return skimage_photos()
    return folder_images(Path(data))


def load_image(path: Path) -> torch.Tensor:
    """An image file as ``[3, H, W]`` float32 in [0, 1] (gray is repeated, alpha dropped)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise HRXError(f"{path}: not a readable image ({e.__class__.__name__})") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255.0)


def split_images(records: list[ImageRecord], seed: int, val_fraction: float = 0.25) -> DataSplit:
    """A fixed split by image: the ``ceil(val_fraction * n)`` images (at least 1, at most n-1) with the
    lowest ``sha256(f"{seed}:{name}")`` are the validation images."""
    if len(records) < 2:
        raise HRXError(f"a train/val split needs at least 2 images, got {len(records)}")
    if not 0.0 < val_fraction < 1.0:
        raise HRXError(f"val fraction must be in (0, 1), not {val_fraction}")
    names = [r.name for r in records]
    if len(set(names)) != len(names):
        raise HRXError("image names must be unique for the split")
    n_val = min(len(records) - 1, max(1, math.ceil(val_fraction * len(records))))
    ranked = sorted(records, key=lambda r: hashlib.sha256(f"{seed}:{r.name}".encode()).hexdigest())
    val = sorted(ranked[:n_val], key=lambda r: r.name)
    train = sorted(ranked[n_val:], key=lambda r: r.name)
    return DataSplit(tuple(train), tuple(val))


# -- degradation ---------------------------------------------------------------------------------

def quantize(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 8-bit levels, like saving an image."""
    return x.clamp(0.0, 1.0).mul(255.0).round().div(255.0)


def mod_crop(img: torch.Tensor, multiple: int) -> torch.Tensor:
    """Crop ``[..., H, W]`` at the bottom/right so both sides are multiples of ``multiple``."""
    h, w = img.shape[-2] - img.shape[-2] % multiple, img.shape[-1] - img.shape[-1] % multiple
    return img[..., :h, :w]


def bicubic_downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, C, H/scale, W/scale]``: antialiased bicubic (PIL-like), 8-bit quantised.
    ``H`` and ``W`` must be multiples of ``scale`` (see :func:`mod_crop`)."""
    if scale == 1:
        return quantize(hr)
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of scale {scale}; mod_crop first")
    lr = F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", align_corners=False, antialias=True)
    return quantize(lr)


def bicubic_upscale(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """The baseline: PyTorch bicubic (a = -0.75, half-pixel centres, edge clamp), the same
    interpolation as the model's global residual, so an untrained model scores exactly this."""
    if scale == 1:
        return lr
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False)


def _gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """``[C, H, W]`` blurred by a separable Gaussian (reflect padding)."""
    if sigma <= 0.05:
        return img
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=img.dtype)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    c = img.shape[0]
    t = F.pad(img.unsqueeze(0), (radius, radius, radius, radius), mode="reflect")
    t = F.conv2d(t, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    t = F.conv2d(t, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return t[0]


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def degrade(hr: torch.Tensor, deg: Degradation, gen: torch.Generator) -> torch.Tensor:
    """``[B, 3, H, W]`` HR crops -> ``[B, 3, H/s, W/s]`` model inputs: blur -> bicubic downscale ->
    noise -> JPEG, each crop with its own random strengths drawn from ``gen``."""
    if deg.blur > 0:
        hr = torch.stack([_gaussian_blur(im, _uniform(gen, 0.0, deg.blur)) for im in hr])
    lr = bicubic_downscale(hr, deg.scale)
    if deg.noise > 0:
        sigmas = torch.rand((lr.shape[0], 1, 1, 1), generator=gen) * (deg.noise / 255.0)
        lr = quantize(lr + torch.randn(lr.shape, generator=gen) * sigmas)
    if deg.jpeg > 0:
        from hrx.degradations import jpeg

        lr = torch.stack([jpeg(im, round(_uniform(gen, deg.jpeg, 95))) for im in lr])
    return lr


def detail(img: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring pixels of ``[C, H, W]``, in 8-bit levels."""
    dx = (img[..., :, 1:] - img[..., :, :-1]).abs().mean()
    dy = (img[..., 1:, :] - img[..., :-1, :]).abs().mean()
    return float(dx + dy) * 127.5


# -- patches ---------------------------------------------------------------------------------------

class PatchSampler:
    """Random HR crops (with flips and 90-degree rotations) from the training images, and their
    degraded LR inputs (``deg``: the simple chain, :class:`Degradation`, or the real-world one,
    :class:`hrx.degradations.RealDegradation`). A share ``extra_share`` of the crops comes from the
    ``extra`` images (synthetic ones, :mod:`hrx.synthetic`). Images are drawn uniformly; a crop whose detail (mean absolute difference
    between neighbouring pixels, in 8-bit levels) is below ``min_detail`` is redrawn, up to
    ``tries`` times, so flat sky and black backgrounds do not fill the batches. All randomness comes
    from one generator; :meth:`get_state` / :meth:`set_state` make ``--resume`` exact."""

    def __init__(self, images: list[tuple[str, torch.Tensor]], patch: int, deg: "Degradation | RealDegradation",
                 seed: int, min_detail: float = 0.0, tries: int = 10,
                 extra: list[tuple[str, torch.Tensor]] | None = None, extra_share: float = 0.0) -> None:
        if patch % deg.scale:
            raise HRXError(f"patch {patch} must be a multiple of the scale {deg.scale}")
        if not 0.0 <= extra_share <= 1.0 or (extra_share > 0 and not extra):
            raise HRXError(f"the share of synthetic crops must be in [0, 1] and needs synthetic images ({extra_share})")
        self.images = [(name, img) for name, img in images if min(img.shape[-2:]) >= patch]
        self.skipped = [name for name, img in images if min(img.shape[-2:]) < patch]
        self.extra = [(name, img) for name, img in (extra or []) if min(img.shape[-2:]) >= patch]
        if not self.images:
            raise HRXError(f"no training image is at least {patch}x{patch} pixels; use a smaller --patch")
        if extra_share > 0 and not self.extra:
            raise HRXError(f"no synthetic image is at least {patch}x{patch} pixels; use a smaller --patch")
        self.patch, self.deg, self.min_detail, self.tries = patch, deg, min_detail, max(1, tries)
        self.extra_share = extra_share
        self.gen = torch.Generator().manual_seed(seed)

    def _draw(self) -> torch.Tensor:
        pool = self.images
        if self.extra_share > 0 and float(torch.rand((), generator=self.gen)) < self.extra_share:
            pool = self.extra
        img = pool[int(torch.randint(0, len(pool), (), generator=self.gen))][1]
        h, w = img.shape[-2:]
        y = int(torch.randint(0, h - self.patch + 1, (), generator=self.gen))
        x = int(torch.randint(0, w - self.patch + 1, (), generator=self.gen))
        return img[:, y:y + self.patch, x:x + self.patch]

    def crop(self) -> torch.Tensor:
        """One augmented HR crop ``[3, patch, patch]``."""
        best, best_detail = None, -1.0
        for _ in range(self.tries):
            c = self._draw()
            d = detail(c)
            if d > best_detail:
                best, best_detail = c, d
            if d >= self.min_detail:
                break
        c = best
        flip, rot = torch.randint(0, 2, (), generator=self.gen), torch.randint(0, 4, (), generator=self.gen)
        if flip:
            c = c.flip(-1)
        return torch.rot90(c, int(rot), dims=(-2, -1)).contiguous()

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lr [B, 3, P/s, P/s], hr [B, 3, P, P])``."""
        hr = torch.stack([self.crop() for _ in range(size)])
        if isinstance(self.deg, Degradation):
            return degrade(hr, self.deg, self.gen), hr
        return self.deg(hr, self.gen), hr

    def get_state(self) -> torch.Tensor:
        return self.gen.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.gen.set_state(state)
