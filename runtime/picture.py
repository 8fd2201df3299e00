"""One picture through the model: its channels mapped to the model's, the output size (``--outscale``,
``--width`` / ``--height``) and the resampling to it. Images (:mod:`hrx.runtime.pipeline`) and video frames
(:mod:`hrx.runtime.video.codec`) both go through here.

Channels (``in_channels`` of the model vs the image):

* same count: straight through; a gray image and an RGB model: replicated to RGB, averaged back to gray;
* RGB image and a gray model: luma through the model, chroma bicubic (BT.601 YCbCr);
* alpha and a model without alpha: ``alpha="bicubic"`` (default; cheap, and a model trained on photos
  rings and invents texture on masks) or ``alpha="model"`` (alpha through the model as gray, twice the
  work); a 4-channel model takes RGBA directly.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np

from hrx.errors import check_choice
from hrx.metrics import ycbcr_matrix
from hrx.runtime.images import Picture

if TYPE_CHECKING:
    from hrx.runtime.pipeline import BatchOptions

ALPHA_MODES = ("bicubic", "model")
RunFn = Callable[[np.ndarray], np.ndarray]  # float32 [C, H, W] -> [Co, H*s, W*s]


# -- one image --------------------------------------------------------------------------------------

def _bicubic(planes: np.ndarray, scale: int) -> np.ndarray:
    """``[C, H, W] -> [C, H*s, W*s]`` bicubic (Pillow, float)."""
    from PIL import Image

    c, h, w = planes.shape
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(p, dtype=np.float32))
                                .resize((w * scale, h * scale), Image.Resampling.BICUBIC)) for p in planes])


_YCC = ycbcr_matrix().astype(np.float32)


def _rgb_to_ycc(rgb: np.ndarray) -> np.ndarray:  # [3, H, W] -> [3, H, W], Cb/Cr centred on 0
    return np.tensordot(_YCC, rgb, axes=1)


def _ycc_to_rgb(ycc: np.ndarray) -> np.ndarray:
    return np.tensordot(np.linalg.inv(_YCC).astype(np.float32), ycc, axes=1)


def _as_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """``[c, H, W]`` colour (c = 1 or 3) -> ``channels`` (1 or 3): replicate gray or average colour."""
    if x.shape[0] == channels:
        return x
    return np.repeat(x, 3, axis=0) if channels == 3 else x.mean(0, keepdims=True)


def upscale_picture(picture: Picture, run: RunFn, in_channels: int, scale: int, alpha: str = "bicubic") -> Picture:
    """Upscale ``picture`` with ``run`` (a tiled model), mapping its channels to the model's (see module doc)."""
    check_choice("alpha", alpha, ALPHA_MODES)
    color = picture.color.transpose(2, 0, 1)  # [c, H, W]
    c = color.shape[0]
    out_alpha = None
    if in_channels == 4:
        a = picture.alpha if picture.alpha is not None else np.ones(color.shape[1:], np.float32)
        y = run(np.concatenate([_as_channels(color, 3), a[None]]))  # [Co, Hs, Ws]
        if y.shape[0] == 4 and picture.alpha is not None:
            out_alpha = y[3]
        out_color = _as_channels(y[:3] if y.shape[0] == 4 else y, c)
    elif in_channels == 1 and c == 3:
        ycc = _rgb_to_ycc(color)
        luma = _as_channels(run(ycc[:1])[:3], 1)
        out_color = _ycc_to_rgb(np.concatenate([luma, _bicubic(ycc[1:], scale)]))
    else:
        y = run(_as_channels(color, in_channels))
        out_color = _as_channels(y[:3] if y.shape[0] == 4 else y, c)
    if picture.alpha is not None and out_alpha is None:
        if alpha == "model":
            out_alpha = _as_channels(run(_as_channels(picture.alpha[None], min(in_channels, 3)))[:3], 1)[0]
        else:
            out_alpha = _bicubic(picture.alpha[None], scale)[0]
    if out_alpha is not None:
        out_alpha = np.clip(out_alpha, 0.0, 1.0)
    return Picture(out_color.transpose(1, 2, 0), out_alpha, picture.bits, picture.icc, picture.exif)


def model_passes(picture: Picture, in_channels: int, alpha: str) -> int:
    """How many times the tiled model runs over ``picture`` (alpha through the model is a second pass)."""
    return 2 if picture.alpha is not None and in_channels != 4 and alpha == "model" else 1


# -- output size ------------------------------------------------------------------------------------

def _round(x: float) -> int:
    return max(1, math.floor(x + 0.5))


def output_size(width: int, height: int, scale: int, options: BatchOptions) -> tuple[int, int]:
    """``(width, height)`` of the output: the model's scale, or ``--outscale F`` (each side times F,
    rounded half up), or ``--width`` / ``--height`` (the other side in proportion; both: the largest size
    that fits inside them, aspect kept)."""
    if options.width and options.height:
        f = min(options.width / width, options.height / height)
    elif options.width:
        f = options.width / width
    elif options.height:
        f = options.height / height
    elif options.outscale is not None:
        f = options.outscale
    else:
        return width * scale, height * scale
    return _round(width * f), _round(height * f)


def resample_planes(planes: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """``[C, H, W]`` float -> ``[C, h, w]`` (``size = (w, h)``): Lanczos when enlarging, area (box) when
    shrinking; returns the filter's name ("" when the size is already right)."""
    from PIL import Image

    c, h, w = planes.shape
    if (w, h) == tuple(size):
        return planes, ""
    shrink = size[0] * size[1] < w * h
    method = Image.Resampling.BOX if shrink else Image.Resampling.LANCZOS
    out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(p, dtype=np.float32)).resize(size, method))
                    for p in planes])
    return out, "area" if shrink else "lanczos"


def resample_picture(picture: Picture, size: tuple[int, int]) -> tuple[Picture, str]:
    """``picture`` resampled to ``size = (w, h)`` (see :func:`resample_planes`), clipped to [0, 1] before and
    after (Lanczos overshoots)."""
    if (picture.width, picture.height) == tuple(size):
        return picture, ""
    # the written file holds [0, 1]: clip first, so that area / Lanczos average what the file would show
    color, how = resample_planes(np.clip(picture.color, 0.0, 1.0).transpose(2, 0, 1), size)
    alpha = None
    if picture.alpha is not None:
        alpha = np.clip(resample_planes(np.clip(picture.alpha, 0.0, 1.0)[None], size)[0][0], 0.0, 1.0)
    return Picture(np.clip(color, 0.0, 1.0).transpose(1, 2, 0), alpha, picture.bits, picture.icc, picture.exif), how
