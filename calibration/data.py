"""Calibration and evaluation tiles from a folder of images.

* The images are split by file, never by crop: the held-back images (``sha256(f"{seed}:{name}")``
  ranks, like :func:`hrx.data.split_images`) give the quality-gate tiles, the others the calibration
  tiles. A folder with a single image is split into its left (calibration) and right (held back) halves.
* Calibration tiles: ``samples`` random ``tile x tile`` crops (the model's input size) of the images
  as they are, fixed seed; an image smaller than a tile is edge-padded to it (and reported).
* Held-back tiles: ``HR`` crops of ``tile * scale`` (the most detailed of a few random draws, so flat
  sky does not make the PSNR meaningless) and their ``LR`` input = :func:`hrx.data.bicubic_downscale`
  (antialiased bicubic, 8-bit), the project's evaluation protocol.

All arrays are float32 ``[N, C, H, W]`` in ``[0, 1]``.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hrx.errors import HRXError
from hrx.metrics import BT601
from hrx.paths import IMAGE_SUFFIXES, image_files

HELD_BACK_FRACTION = 0.25
FEW_IMAGES = 4  # with fewer images the gate cannot see beyond them (see hrx.calibration.pipeline)
DETAIL_TRIES = 8


@dataclass
class TileSet:
    """What :func:`sample_tiles` drew: calibration inputs and the held-back pairs for the gate."""

    calib: np.ndarray  # [samples, C, tile, tile] model inputs
    eval_lr: np.ndarray  # [n, C, tile, tile] model inputs (bicubic-downscaled eval_hr)
    eval_hr: np.ndarray  # [n, C, tile*scale, tile*scale] ground truth
    calib_images: list[str] = field(default_factory=list)
    held_back_images: list[str] = field(default_factory=list)
    padded: list[str] = field(default_factory=list)  # "name (WxH)" of images smaller than a crop


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted). Raises when there is none."""
    folder = Path(folder)
    files = image_files(folder)
    if not files:
        what = "is empty" if not any(folder.iterdir()) else "has no images"
        raise HRXError(f"{folder}: {what} ({', '.join(IMAGE_SUFFIXES)}); calibration needs a few photos like the ones you will upscale")
    return files


def split_held_back(names: list[str], seed: int) -> tuple[list[str], list[str]]:
    """``(calibration, held_back)`` by image name; at least one of each when there are two or more."""
    if len(names) < 2:
        return list(names), []
    n_held = min(len(names) - 1, max(1, math.ceil(HELD_BACK_FRACTION * len(names))))
    ranked = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
    return sorted(ranked[n_held:]), sorted(ranked[:n_held])


def load_rgb(path: Path, channels: int) -> np.ndarray:
    """An image as float32 ``[channels, H, W]`` in ``[0, 1]``: gray repeated, RGB to BT.601 luma for a
    1-channel model, RGB + alpha (opaque when the file has none) for a 4-channel one."""
    from hrx.runtime.images import read_image

    picture = read_image(path)
    color = picture.color  # [H, W, 1 | 3]
    if channels == 4:
        rgb = np.repeat(color, 3, axis=2) if color.shape[2] == 1 else color
        alpha = picture.alpha if picture.alpha is not None else np.ones(rgb.shape[:2], dtype=np.float32)
        out = np.concatenate([rgb, alpha[..., None]], axis=2)
    elif channels == color.shape[2]:
        out = color
    elif channels == 3 and color.shape[2] == 1:
        out = np.repeat(color, 3, axis=2)
    elif channels == 1 and color.shape[2] == 3:
        out = color @ np.array(BT601, dtype=np.float32)[:, None]
    else:
        raise HRXError(f"{path}: {color.shape[2]}-channel image for a {channels}-channel model")
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


def pad_to(img: np.ndarray, side: int) -> np.ndarray:
    """Edge-pad ``[C, H, W]`` at the bottom/right to at least ``side x side``."""
    h, w = img.shape[1:]
    if h >= side and w >= side:
        return img
    return np.pad(img, ((0, 0), (0, max(0, side - h)), (0, max(0, side - w))), mode="edge")


def _crop(img: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[1:]
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    return img[:, y:y + side, x:x + side]


def _detail(tile: np.ndarray) -> float:
    """Mean absolute neighbour difference (8-bit levels), as :func:`hrx.data.detail`."""
    return float(np.abs(np.diff(tile, axis=2)).mean() + np.abs(np.diff(tile, axis=1)).mean()) * 127.5


def _detailed_crop(img: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    best = [_crop(img, side, rng) for _ in range(DETAIL_TRIES)]
    return max(best, key=_detail)


def _draw(images: list[np.ndarray], n: int, side: int, rng: np.random.Generator, detailed: bool) -> np.ndarray:
    tiles = []
    for i in range(n):
        img = images[i % len(images)] if detailed else images[int(rng.integers(0, len(images)))]
        tiles.append(_detailed_crop(img, side, rng) if detailed else _crop(img, side, rng))
    return np.ascontiguousarray(np.stack(tiles), dtype=np.float32)


def bicubic_down(hr: np.ndarray, scale: int) -> np.ndarray:
    """The evaluation input: :func:`hrx.data.bicubic_downscale` (antialiased bicubic, 8-bit)."""
    import torch

    from hrx.data import bicubic_downscale

    return bicubic_downscale(torch.from_numpy(hr), scale).numpy().astype(np.float32)


def augment(tiles: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photometric and geometric variants of ``[N, C, H, W]`` tiles in [0, 1]: a flip / transpose, a
    contrast stretch about the tile's mean and a brightness gain, and for colour tiles a saturation boost
    and per-channel gains (which also tint gray photos); clipped to [0, 1]."""
    out = np.empty_like(tiles, dtype=np.float32)
    for k, t in enumerate(tiles.astype(np.float32)):
        t = t[:, ::-1] if rng.random() < 0.5 else t
        t = t[:, :, ::-1] if rng.random() < 0.5 else t
        t = t.transpose(0, 2, 1) if rng.random() < 0.5 and t.shape[1] == t.shape[2] else t
        mean = float(t.mean())
        t = (t - mean) * rng.uniform(0.7, 1.8) + mean * rng.uniform(0.7, 1.8)
        if t.shape[0] >= 3:
            luma = np.tensordot(np.array([0.299, 0.587, 0.114], np.float32), t[:3], axes=1)[None]
            colour = (luma + (t[:3] - luma) * rng.uniform(1.0, 2.5)) * rng.uniform(0.6, 1.4, (3, 1, 1))
            t = np.concatenate([colour, t[3:]]) if t.shape[0] > 3 else colour
        out[k] = np.clip(t, 0.0, 1.0)
    return out


def image_count(names: list[str]) -> int:
    """Distinct source images behind split names (one image's halves count once)."""
    return len({n.removesuffix(" (left half)").removesuffix(" (right half)") for n in names})


def sample_tiles(folder: str | Path, tile: int, scale: int, channels: int, samples: int, eval_tiles: int,
                 seed: int = 0) -> TileSet:
    """Read the images under ``folder`` and draw the calibration and held-back tiles (see module doc)."""
    if samples < 1:
        raise HRXError(f"--samples must be at least 1, not {samples}")
    files = list_images(folder)
    root = Path(folder)
    names = [p.relative_to(root).as_posix() for p in files]
    images = {n: load_rgb(p, channels) for n, p in zip(names, files)}
    calib_names, held_names = split_held_back(names, seed)
    hr_side = tile * scale
    calib_imgs = [images[n] for n in calib_names]
    held_imgs = [images[n] for n in held_names]
    if not held_imgs:  # one image: left half calibrates, right half is held back
        img = calib_imgs[0]
        half = img.shape[2] // 2
        calib_imgs, held_imgs = [img[:, :, :max(1, half)]], [img[:, :, half:]]
        held_names = [f"{calib_names[0]} (right half)"]
        calib_names = [f"{calib_names[0]} (left half)"]
    padded = sorted({f"{n} ({images[n].shape[2]}x{images[n].shape[1]})" for n in names
                     if min(images[n].shape[1:]) < max(tile, hr_side if n in held_names else tile)})
    rng = np.random.default_rng(seed)
    calib = _draw([pad_to(i, tile) for i in calib_imgs], samples, tile, rng, detailed=False)
    eval_hr = _draw([pad_to(i, hr_side) for i in held_imgs], eval_tiles, hr_side, rng, detailed=True)
    return TileSet(calib=calib, eval_lr=bicubic_down(eval_hr, scale), eval_hr=eval_hr, calib_images=calib_names,
                   held_back_images=held_names, padded=padded)
