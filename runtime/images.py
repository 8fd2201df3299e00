"""Reading and writing images for the runtime: modes, EXIF orientation, ICC profiles, 16-bit, alpha.

Every decoded image becomes a :class:`Picture`: float32 colour ``[H, W, 1 | 3]`` and optional alpha
``[H, W]``, both in ``[0, 1]``. Modes map as follows:

* ``RGB``, ``L`` kept; ``RGBA`` / ``LA`` keep their alpha; ``1`` -> ``L``.
* 16-bit grayscale (``I;16*``, ``I``) -> computed in float from ``/ 65535`` and written back 16-bit
  (PNG, TIFF). Pillow has no 16-bit RGB mode: such files arrive as 8-bit RGB.
* alpha is dropped when writing JPEG or BMP (Pillow reads 32-bit BMP back without it).
* palette -> ``RGB`` (``RGBA`` when it has transparency); ``CMYK`` -> ``RGB`` through its ICC profile when
  it has one (the CMYK profile is then dropped, the output is sRGB); ``YCbCr``, ``LAB``, ``HSV`` -> ``RGB``.

EXIF orientation is applied on reading (the orientation tag is then removed); the EXIF block and the
ICC profile are carried to the output where the format can hold them. Files are written to a hidden
temporary name in the output folder and renamed, so no half-written output ever carries the final name.
"""
from __future__ import annotations

import io
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from hrx.errors import HRXError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})
DEFAULT_MAX_PIXELS = 50_000_000  # a 50 MP photo; x4 output in float32 is then ~9.6 GB
FORMATS: dict[str, tuple[str, str]] = {  # --format name -> (Pillow format, file suffix)
    "png": ("PNG", ".png"),
    "jpeg": ("JPEG", ".jpg"),
    "webp": ("WEBP", ".webp"),
    "tiff": ("TIFF", ".tif"),
    "bmp": ("BMP", ".bmp"),
}
_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_TO_RGB_MODES = ("RGBX", "YCbCr", "LAB", "HSV")


@dataclass
class Picture:
    color: np.ndarray  # float32 [H, W, 1 | 3] in [0, 1]
    alpha: np.ndarray | None = None  # float32 [H, W] in [0, 1]
    bits: int = 8  # 16 only for single-channel images without alpha
    icc: bytes | None = None
    exif: bytes | None = None

    @property
    def height(self) -> int:
        return int(self.color.shape[0])

    @property
    def width(self) -> int:
        return int(self.color.shape[1])

    @property
    def megapixels(self) -> float:
        return self.height * self.width / 1e6


def configure_pillow(max_pixels: int) -> None:
    """Process-wide Pillow settings for a CLI run: its own decompression-bomb limit follows ours and
    its warning is silenced (:func:`read_image` reports over-limit files itself). Call once, from the CLI."""
    import warnings

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    """Decode ``path`` into a :class:`Picture`. Raises :class:`HRXError` naming the file and the reason."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise HRXError(f"{path}: empty file")
        with Image.open(path) as im:
            if im.width * im.height > max_pixels:
                raise HRXError(f"{path}: {im.width}x{im.height} is over the pixel limit of {max_pixels:,} "
                               "(a decompression bomb?); raise it with --max-pixels")
            return _to_picture(im, path)
    except HRXError:
        raise
    except Image.DecompressionBombError:
        raise HRXError(f"{path}: over Pillow's pixel limit (a decompression bomb?); raise it with --max-pixels") from None
    except UnidentifiedImageError:
        raise HRXError(f"{path}: not an image, or a format Pillow cannot read") from None
    except FileNotFoundError:
        raise HRXError(f"{path}: no such file") from None
    except PermissionError:
        raise HRXError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise HRXError(f"{path}: is a directory") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:  # truncated / corrupt data
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HRXError(f"{path}: unreadable or truncated image ({reason})") from None


def _to_picture(im, path: Path) -> Picture:
    from PIL import ImageOps

    icc = im.info.get("icc_profile") or None
    im = ImageOps.exif_transpose(im)  # loads the pixels; copies even when there is nothing to do
    exif = _exif_without_orientation(im)
    mode = im.mode
    if mode == "CMYK":
        im, icc = _cmyk_to_rgb(im, icc), None
    elif mode in ("P", "PA"):
        im = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB")
    elif mode in ("L", "RGB") and "transparency" in im.info:
        im = im.convert("LA" if mode == "L" else "RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    elif mode in _TO_RGB_MODES:
        im = im.convert("RGB")
    if im.mode in _SIXTEEN_BIT_MODES:
        gray = np.asarray(im).astype(np.float32)
        color = (np.clip(gray, 0, 65535) / 65535.0)[..., None]
        return Picture(color, None, 16, icc, exif)
    if im.mode not in ("L", "LA", "RGB", "RGBA"):
        raise HRXError(f"{path}: unsupported image mode {im.mode}")
    arr = np.asarray(im, dtype=np.float32) / 255.0
    if arr.ndim == 2:
        arr = arr[..., None]
    if im.mode in ("LA", "RGBA"):
        return Picture(np.ascontiguousarray(arr[..., :-1]), np.ascontiguousarray(arr[..., -1]), 8, icc, exif)
    return Picture(arr, None, 8, icc, exif)


def _exif_without_orientation(im) -> bytes | None:
    exif = im.getexif()
    if _ORIENTATION in exif:
        del exif[_ORIENTATION]
    return exif.tobytes() if len(exif) else None


def _cmyk_to_rgb(im, icc: bytes | None):
    """CMYK -> sRGB through the embedded profile when there is one, else Pillow's naive conversion."""
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken profile or no littlecms: fall back below
            pass
    return im.convert("RGB")


def to_uint(values: np.ndarray, bits: int) -> np.ndarray:
    """float in [0, 1] -> uint8 / uint16, rounded."""
    top = 65535.0 if bits == 16 else 255.0
    return (np.clip(values, 0.0, 1.0) * top + 0.5).astype(np.uint16 if bits == 16 else np.uint8)


def to_pil(picture: Picture, fmt: str):
    """The Pillow image to save ``picture`` as ``fmt`` (a key of :data:`FORMATS`)."""
    from PIL import Image

    pil_format = FORMATS[fmt][0]
    gray = picture.color.shape[-1] == 1
    alpha = picture.alpha if pil_format not in ("JPEG", "BMP") else None  # no (reliable) alpha there: dropped
    if picture.bits == 16 and gray and alpha is None and pil_format in ("PNG", "TIFF"):
        return Image.fromarray(to_uint(picture.color[..., 0], 16))  # mode I;16
    color = to_uint(picture.color, 8)
    if alpha is not None:
        arr = np.concatenate([color, to_uint(alpha, 8)[..., None]], axis=-1)
        return Image.fromarray(arr)  # LA or RGBA from the shape
    return Image.fromarray(color[..., 0] if gray else color)


def write_image(path: str | os.PathLike, picture: Picture, fmt: str = "png", quality: int = 95) -> Path:
    """Encode ``picture`` to ``path`` atomically, with its ICC profile and EXIF where ``fmt`` holds them."""
    if fmt not in FORMATS:
        raise HRXError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
    pil_format = FORMATS[fmt][0]
    im = to_pil(picture, fmt)
    kwargs: dict = {}
    if picture.icc and pil_format != "BMP":
        kwargs["icc_profile"] = picture.icc
    if picture.exif and pil_format != "BMP":
        kwargs["exif"] = picture.exif
    if pil_format in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
    path = Path(path)
    atomic_write(path, lambda f: im.save(f, format=pil_format, **kwargs))
    return path


def temp_name(path: Path) -> Path:
    """A hidden, unique name beside ``path`` for writing it: ``.NAME.<random>.tmp``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Call ``write`` on a new temporary file beside ``path``, flush it to disk, then rename it over
    ``path``. On any error (KeyboardInterrupt included) the temporary file is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
