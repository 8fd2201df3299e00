"""Reading and writing images for the runtime: modes, EXIF orientation, ICC profiles, 16-bit, alpha.

Every decoded image becomes a :class:`Picture`: float32 colour ``[H, W, 1 | 3]`` and optional alpha
``[H, W]``, both in ``[0, 1]``. Modes map as follows:

* ``RGB``, ``L`` kept; ``RGBA`` / ``LA`` keep their alpha; ``1`` -> ``L``.
* 16 bits per channel (PNG and TIFF; gray, gray + alpha, RGB, RGBA) -> decoded at full precision by
  ``imagecodecs`` (PNG) and ``tifffile`` (TIFF), computed in float from ``/ 65535`` and written back at
  16 bits to PNG and TIFF (Pillow has no 16-bit RGB mode: it would cut such files to 8 bits). JPEG,
  WebP and BMP hold 8 bits: a 16-bit picture is rounded to 8 bits there (the pipeline warns once).
  Other 16-bit gray files Pillow reads (``I;16*``, ``I``) keep 16 bits too.
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
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from hrx.errors import HRXError, one_line
from hrx.paths import atomic_write, atomic_write_bytes

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
EIGHT_BIT_FORMATS = ("jpeg", "webp", "bmp")  # --format values that hold 8 bits per channel only
# zlib level of PNG files and of 16-bit TIFF (deflate), 0-9: the level changes the file's size and the
# time spent writing it, never its pixels. 1 (OpenCV's imwrite default): zlib's fastest level that still
# matches repeated strings; Pillow's default 6 spends several times longer per image for a file about a
# quarter smaller (an x4 upscaled photo, 2560x1708: 2.90 MB at 1, 2.23 MB at 6, 2.04 MB at 9)
DEFAULT_PNG_LEVEL = 1
PNG_LEVELS = range(10)
# TIFF tags that describe a TIFF file's own layout (sizes, strips, compression, samples, ICC): Pillow
# lists them as EXIF of a TIFF input; they are not carried to the output
_TIFF_LAYOUT_TAGS = frozenset({254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284, 317,
                               320, 322, 323, 324, 325, 338, 339, 340, 341, 34675})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_TO_RGB_MODES = ("RGBX", "YCbCr", "LAB", "HSV")


@dataclass
class Picture:
    color: np.ndarray  # float32 [H, W, 1 | 3] in [0, 1] (or, after quantize(), uint8 / uint16)
    alpha: np.ndarray | None = None  # float32 [H, W] in [0, 1] (idem)
    bits: int = 8  # 8 or 16 bits per channel, colour and alpha alike
    icc: bytes | None = None
    exif: bytes | None = None

    @property
    def height(self) -> int:
        """Height in pixels."""
        return int(self.color.shape[0])

    @property
    def width(self) -> int:
        """Width in pixels."""
        return int(self.color.shape[1])

    @property
    def megapixels(self) -> float:
        """Width times height, in millions."""
        return self.height * self.width / 1e6


def configure_pillow(max_pixels: int) -> None:
    """Process-wide Pillow settings for a CLI run: its own decompression-bomb limit follows ours and
    its warning is silenced (:func:`read_image` reports over-limit files itself). Call once, from the CLI."""
    import warnings

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def read_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
               warn: Callable[[str], None] | None = None) -> Picture:
    """Decode ``path`` into a :class:`Picture`. Raises :class:`HRXError` naming the file and the reason;
    ``warn`` gets one line for what is read without (an unreadable EXIF block)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise HRXError(f"{path}: empty file")
        deep = _sixteen_bit_container(path)
        if deep is not None:
            return _read_sixteen(path, deep, max_pixels, warn)
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
    tiff = im.format == "TIFF"
    im = ImageOps.exif_transpose(im)  # loads the pixels; copies even when there is nothing to do
    exif = _exif_without_orientation(im, tiff)
    mode = im.mode
    if mode == "CMYK":
        im, icc = _cmyk_to_rgb(im, icc, path), None
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


def sixteen_bit(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds 16 bits per channel (from its header; ``False`` for anything unreadable, which
    the pipeline reports when it reads the file)."""
    from PIL import Image

    try:
        if _sixteen_bit_container(Path(path)) is not None:
            return True
        with Image.open(path) as im:
            return im.mode in _SIXTEEN_BIT_MODES
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def _sixteen_bit_container(path: Path) -> str | None:
    """``"png"`` / ``"tiff"`` when ``path`` holds 16-bit unsigned samples that need a 16-bit decoder,
    from the file's header (not its suffix); ``None`` otherwise (Pillow reads it)."""
    with open(path, "rb") as f:
        head = f.read(32)
    if head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR" and len(head) >= 26:
        return "png" if head[24] == 16 else None
    if head[:4] in _TIFF_MAGICS:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                return "tiff" if page.bitspersample == 16 and int(page.sampleformat) == 1 else None
        except Exception:  # noqa: BLE001 - a TIFF tifffile cannot parse: Pillow reports it below
            return None
    return None


def _read_sixteen(path: Path, container: str, max_pixels: int, warn: Callable[[str], None] | None = None) -> Picture:
    """A 16-bit PNG (imagecodecs) or TIFF (tifffile) at full precision, with EXIF orientation applied
    and the ICC profile and EXIF kept. Channels: 1 gray, 2 gray + alpha, 3 RGB, 4 RGBA."""
    if container == "png":
        arr, icc, exif, orientation = _decode_png16(path, max_pixels)
    else:
        arr, icc, exif, orientation = _decode_tiff16(path, max_pixels, warn)
    arr = _orient(arr, orientation)
    values = arr.astype(np.float32) / 65535.0
    if values.ndim == 2:
        values = values[..., None]
    channels = values.shape[-1]
    if channels not in (1, 2, 3, 4):
        raise HRXError(f"{path}: {channels} channels at 16 bits; expected gray, gray + alpha, RGB or RGBA")
    has_alpha = channels in (2, 4)
    color = np.ascontiguousarray(values[..., :-1] if has_alpha else values)
    alpha = np.ascontiguousarray(values[..., -1]) if has_alpha else None
    return Picture(color, alpha, 16, icc, exif)


def _check_pixels(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise HRXError(f"{path}: {width}x{height} is over the pixel limit of {max_pixels:,} "
                       "(a decompression bomb?); raise it with --max-pixels")


def _decode_png16(path: Path, max_pixels: int) -> tuple[np.ndarray, bytes | None, bytes | None, int]:
    import imagecodecs
    from PIL import Image

    data = path.read_bytes()
    _check_pixels(path, int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), max_pixels)
    with Image.open(io.BytesIO(data)) as im:  # metadata only: Pillow parses the chunks, not the pixels
        icc = im.info.get("icc_profile") or None
        exif_tags = im.getexif()
    try:
        arr = imagecodecs.png_decode(data)
    except Exception as e:  # noqa: BLE001 - imagecodecs raises its own PngError
        raise HRXError(f"{path}: unreadable or truncated image ({str(e).strip() or type(e).__name__})") from None
    orientation = int(exif_tags.pop(_ORIENTATION, 1) or 1)
    return arr, icc, (exif_tags.tobytes() if len(exif_tags) else None), orientation


def _decode_tiff16(path: Path, max_pixels: int, warn: Callable[[str], None] | None = None
                   ) -> tuple[np.ndarray, bytes | None, bytes | None, int]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        _check_pixels(path, int(page.imagewidth), int(page.imagelength), max_pixels)
        photometric = int(page.photometric)
        if photometric not in (0, 1, 2):  # MINISWHITE, MINISBLACK, RGB
            raise HRXError(f"{path}: 16-bit TIFF with photometric {page.photometric.name} is not supported "
                           "(gray or RGB, with or without alpha)")
        arr = page.asarray()
        if page.planarconfig == 2 and arr.ndim == 3:  # SEPARATE: [S, H, W]
            arr = np.moveaxis(arr, 0, -1)
        if photometric == 0:
            arr = 65535 - arr
        extras = tuple(int(e) for e in page.extrasamples)
        if extras and extras[0] == 1 and arr.ndim == 3:  # associated (premultiplied) alpha: un-premultiply
            keep = arr.shape[-1] - len(extras) + 1
            arr = arr[..., :keep].astype(np.float64)
            a = arr[..., -1:]
            arr[..., :-1] = np.where(a > 0, arr[..., :-1] * 65535.0 / np.maximum(a, 1), 0)
            arr = np.clip(np.rint(arr), 0, 65535).astype(np.uint16)
        elif extras and arr.ndim == 3:  # keep the first extra sample as alpha, drop the others
            arr = arr[..., :arr.shape[-1] - len(extras) + 1]
        tags = page.tags
        icc = tags[34675].value if 34675 in tags else None
        orientation = int(tags[274].value) if 274 in tags else 1
    exif = None
    try:  # EXIF as Pillow would carry it (Pillow reads 16-bit RGB / RGBA TIFF headers, not gray + alpha)
        from PIL import Image

        with Image.open(path) as im:
            exif = _exif_without_orientation(im)
    except Exception as e:  # noqa: BLE001 - written without EXIF, and said so
        if warn is not None:
            warn(f"{path}: its EXIF block is unreadable ({one_line(e)}); the output is written without it")
    return arr, (bytes(icc) if icc else None), exif, orientation


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply the EXIF orientation (1-8) to ``[H, W, ...]`` pixels, as ``PIL.ImageOps.exif_transpose`` does."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return arr.swapaxes(0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def _exif_without_orientation(im, tiff: bool = False) -> bytes | None:
    exif = im.getexif()
    drop = {_ORIENTATION} | (_TIFF_LAYOUT_TAGS if tiff or im.format == "TIFF" else set())
    for tag in drop & set(exif):
        del exif[tag]
    return exif.tobytes() if len(exif) else None


def _cmyk_to_rgb(im, icc: bytes | None, path: Path):
    """CMYK -> sRGB through the embedded profile when there is one, else Pillow's naive conversion.
    A profile that cannot be applied fails the image: the naive conversion would give wrong colours."""
    if not icc:
        return im.convert("RGB")
    try:
        from PIL import ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except Exception as e:  # noqa: BLE001 - ImageCms raises PyCMSError, OSError, ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HRXError(f"{path}: its CMYK ICC profile cannot be converted to sRGB ({reason}); the colours would "
                       "come out wrong, so the image is not upscaled") from None


def to_uint(values: np.ndarray, bits: int, rows: int = 256) -> np.ndarray:
    """float in [0, 1] -> uint8 / uint16, rounded; ``rows`` rows at a time, so the float temporaries stay
    small next to the output (a whole-image ``clip(x) * 255`` would allocate two more float images)."""
    dtype = np.uint16 if bits == 16 else np.uint8
    if values.dtype == dtype:  # already quantized (:func:`quantize`)
        return values
    if values.dtype.kind in "ui":  # quantized to the other depth: back to [0, 1] first
        values = values.astype(np.float32) / np.float32(np.iinfo(values.dtype).max)
    top = np.float32(65535.0 if bits == 16 else 255.0)
    out = np.empty(values.shape, dtype)
    for r in range(0, max(1, values.shape[0]), rows):
        part = np.clip(values[r:r + rows], 0.0, 1.0)
        part *= top
        part += np.float32(0.5)
        out[r:r + rows] = part
    return out


def quantize(picture: Picture, fmt: str) -> Picture:
    """``picture`` with its colour and alpha as the integers ``fmt`` will store (uint16 for a 16-bit picture
    to PNG / TIFF, else uint8). The pipeline does this before handing an image to the writer thread, so
    the float image is freed while the file is encoded (a float32 RGB image is 4x its 8-bit pixels)."""
    bits = 8 if fmt in EIGHT_BIT_FORMATS else picture.bits
    alpha = None if picture.alpha is None else to_uint(picture.alpha, bits)
    return Picture(to_uint(picture.color, bits), alpha, bits, picture.icc, picture.exif)


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


def write_image(path: str | os.PathLike, picture: Picture, fmt: str = "png", quality: int = 95, tag: str = "",
                png_level: int = DEFAULT_PNG_LEVEL) -> Path:
    """Encode ``picture`` to ``path`` atomically, with its ICC profile and EXIF where ``fmt`` holds them.
    A 16-bit picture is written at 16 bits to PNG and TIFF, rounded to 8 bits for the other formats.
    ``tag`` (a run id) goes into the temporary file's name (:func:`hrx.paths.temporary_name`).
    ``png_level``: zlib level (0-9) of PNG and of 16-bit TIFF; size and speed only, the pixels are the same."""
    if fmt not in FORMATS:
        raise HRXError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
    if png_level not in PNG_LEVELS:
        raise HRXError(f"PNG compression level must be 0-9, not {png_level}")
    pil_format = FORMATS[fmt][0]
    path = Path(path)
    if picture.bits == 16 and fmt == "png":
        return atomic_write_bytes(path, encode_png16(picture, png_level), tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    if picture.bits == 16 and fmt == "tiff":
        return atomic_write(path, lambda tmp: write_tiff16(tmp, picture, png_level), tag)
    im = to_pil(picture, fmt)
    kwargs: dict = {}
    if picture.icc and pil_format != "BMP":
        kwargs["icc_profile"] = picture.icc
    if picture.exif and pil_format != "BMP":
        kwargs["exif"] = picture.exif
    if pil_format in ("JPEG", "WEBP"):
        kwargs["quality"] = quality
    if pil_format == "PNG":
        kwargs["compress_level"] = png_level
    return atomic_write(path, lambda tmp: im.save(tmp, format=pil_format, **kwargs), tag)


def sixteen_bit_samples(picture: Picture) -> np.ndarray:
    """``[H, W]`` (gray) or ``[H, W, C]`` uint16: colour then alpha."""
    color = to_uint(picture.color, 16)
    if picture.alpha is not None:
        return np.concatenate([color, to_uint(picture.alpha, 16)[..., None]], axis=-1)
    return np.ascontiguousarray(color[..., 0] if color.shape[-1] == 1 else color)


def encode_png16(picture: Picture, level: int = DEFAULT_PNG_LEVEL) -> bytes:
    """A 16-bit PNG (gray, gray + alpha, RGB or RGBA from the picture) with its ICC profile (iCCP) and
    EXIF (eXIf) chunks, placed right after IHDR as the PNG specification asks (before the pixels)."""
    import imagecodecs

    data = bytes(imagecodecs.png_encode(sixteen_bit_samples(picture), level=level))
    extra = b""
    if picture.icc:
        extra += _png_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(picture.icc))
    if picture.exif:
        exif = picture.exif[6:] if picture.exif.startswith(b"Exif\x00\x00") else picture.exif
        extra += _png_chunk(b"eXIf", exif)
    ihdr_end = 8 + 8 + 13 + 4  # signature, IHDR length/type, IHDR data, CRC
    return data[:ihdr_end] + extra + data[ihdr_end:]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def write_tiff16(file: str | os.PathLike, picture: Picture, level: int = DEFAULT_PNG_LEVEL) -> None:
    """A 16-bit TIFF (deflate at zlib ``level``) with the ICC profile; alpha as an unassociated extra sample.
    (tifffile writes no EXIF IFD: EXIF is kept in 16-bit PNG and in 8-bit outputs.)"""
    import tifffile

    samples = sixteen_bit_samples(picture)
    rgb = picture.color.shape[-1] == 3
    tifffile.imwrite(file, samples, photometric="rgb" if rgb else "minisblack",
                     extrasamples=["unassalpha"] if picture.alpha is not None else None,
                     compression="zlib", compressionargs={"level": level}, iccprofile=picture.icc or None,
                     metadata=None)
