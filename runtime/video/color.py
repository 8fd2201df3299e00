"""Video frames <-> float RGB with the stream's own matrix, range and bit depth, in NumPy (float32).

Decoding reads the planes of a PyAV frame at their own depth (8 to 16 bits: a 10-bit frame is never cut
to 8 bits), upsamples 4:2:0 / 4:2:2 chroma (linear: co-sited horizontally, centred vertically, FFmpeg's
default ``left`` siting) and converts Y'CbCr to R'G'B' with the stream's matrix (BT.601, BT.709,
BT.2020 non-constant luminance, SMPTE 240M, FCC) and range (limited "MPEG" or full "JPEG"). Encoding is
the inverse: matrix, chroma averaged with the matching filter, rounded to the output depth.

Untagged streams follow FFmpeg players' convention: BT.709 from 720 lines up, else BT.601; limited range
except ``yuvj*`` formats. The transfer function is not undone: the model sees the encoded signal (for
PQ / HLG sources too), and the output carries the input's primaries / transfer / matrix / range tags.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hrx.errors import HRXError

if TYPE_CHECKING:
    import av

# AVColorSpace -> (Kr, Kb)
_KR_KB = {1: (0.2126, 0.0722), 4: (0.30, 0.11), 5: (0.299, 0.114), 6: (0.299, 0.114), 7: (0.212, 0.087),
          9: (0.2627, 0.0593), 10: (0.2627, 0.0593)}
BT709, BT601 = 1, 6  # AVCOL_SPC_*
MPEG, JPEG = 1, 2  # AVCOL_RANGE_*: limited, full
_YUV = re.compile(r"^yuv(j?)(420|422|444|440)p(\d+)?(le)?$")
_GRAY = re.compile(r"^gray(\d+)?(le)?$")
_GBR = re.compile(r"^gbrp(\d+)?(le)?$")
_SUBSAMPLING = {"420": (2, 2), "422": (2, 1), "444": (1, 1), "440": (1, 2)}  # (horizontal, vertical)


@dataclass(frozen=True)
class Layout:
    """A planar pixel format this module reads and writes directly."""

    name: str
    family: str  # "yuv", "gray" or "gbr"
    bits: int
    sub_x: int = 1  # chroma subsampling
    sub_y: int = 1
    full_range_only: bool = False  # yuvj*, gbrp*

    @property
    def dtype(self) -> type:
        """The numpy dtype of one sample: uint8 up to 8 bits, else uint16."""
        return np.uint8 if self.bits <= 8 else np.uint16


def layout(pix_fmt: str) -> Layout | None:
    """The :class:`Layout` of ``pix_fmt``, or ``None`` for formats converted through FFmpeg first."""
    m = _YUV.match(pix_fmt)
    if m and (m.group(3) is None) == (m.group(4) is None):
        sx, sy = _SUBSAMPLING[m.group(2)]
        return Layout(pix_fmt, "yuv", int(m.group(3) or 8), sx, sy, bool(m.group(1)))
    m = _GRAY.match(pix_fmt)
    if m and (m.group(1) is None) == (m.group(2) is None):
        return Layout(pix_fmt, "gray", int(m.group(1) or 8))
    m = _GBR.match(pix_fmt)
    if m and (m.group(1) is None) == (m.group(2) is None):
        return Layout(pix_fmt, "gbr", int(m.group(1) or 8), full_range_only=True)
    return None


def bits_of(pix_fmt: str) -> int:
    """Bits per sample of a pixel format (the deepest component)."""
    import av

    return max(c.bits for c in av.VideoFormat(pix_fmt).components)


@dataclass(frozen=True)
class Color:
    """The colour tags of a stream (FFmpeg's AVColor* numbers) and what conversion they mean."""

    space: int = 2  # matrix (AVColorSpace); 2: unspecified
    primaries: int = 2
    trc: int = 2
    range: int = 0  # 0: unspecified, 1: limited, 2: full

    def kr_kb(self, height: int) -> tuple[float, float]:
        """The luma coefficients of the colour space (BT.709 from 720 lines up when unspecified, else BT.601)."""
        if self.space in _KR_KB:
            return _KR_KB[self.space]
        return _KR_KB[BT709 if height >= 720 else BT601]

    def full(self, fmt: Layout) -> bool:
        """Whether samples use the full range (JPEG range, or a layout that has only full range)."""
        return fmt.full_range_only or self.range == JPEG

    @property
    def is_hdr(self) -> bool:
        """Whether the transfer is PQ (SMPTE 2084) or HLG."""
        return self.trc in (16, 18)  # SMPTE 2084 (PQ), ARIB STD-B67 (HLG)


def frame_color(frame: av.VideoFrame) -> Color:
    """The colour tags a decoded PyAV frame carries."""
    return Color(int(frame.colorspace), int(frame.color_primaries), int(frame.color_trc), int(frame.color_range))


def read_planes(frame: av.VideoFrame, fmt: Layout) -> list[np.ndarray]:
    """The planes of ``frame`` as integer arrays (no copy beyond dropping the row padding)."""
    out = []
    for plane in frame.planes:
        item = np.dtype(fmt.dtype).itemsize
        arr = np.frombuffer(plane, dtype=fmt.dtype if item == 1 else np.dtype("<u2"))
        out.append(arr.reshape(plane.height, plane.line_size // item)[:, :plane.width])
    return out


def _upsample(c: np.ndarray, sx: int, sy: int, height: int, width: int) -> np.ndarray:
    """Chroma plane -> full size: linear, horizontal samples co-sited with even luma columns, vertical
    samples centred between two luma rows."""
    if sx == 2:
        right = np.concatenate([c[:, 1:], c[:, -1:]], axis=1)
        wide = np.empty((c.shape[0], c.shape[1] * 2), np.float32)
        wide[:, 0::2], wide[:, 1::2] = c, (c + right) * 0.5
        c = wide
    if sy == 2:
        up = np.concatenate([c[:1], c[:-1]], axis=0)
        down = np.concatenate([c[1:], c[-1:]], axis=0)
        tall = np.empty((c.shape[0] * 2, c.shape[1]), np.float32)
        tall[0::2], tall[1::2] = 0.75 * c + 0.25 * up, 0.75 * c + 0.25 * down
        c = tall
    return c[:height, :width]


def _downsample(c: np.ndarray, sx: int, sy: int) -> np.ndarray:
    """Full-size chroma -> subsampled, the filters matching :func:`_upsample`'s siting."""
    if sy == 2:
        if c.shape[0] % 2:
            c = np.concatenate([c, c[-1:]], axis=0)
        c = (c[0::2] + c[1::2]) * 0.5
    if sx == 2:
        if c.shape[1] % 2:
            c = np.concatenate([c, c[:, -1:]], axis=1)
        left = np.concatenate([c[:, :1], c[:, 1:-1:2]], axis=1)
        c = 0.25 * left + 0.5 * c[:, 0::2] + 0.25 * c[:, 1::2]
    return c


def _scales(fmt: Layout, full: bool) -> tuple[float, float, float, float]:
    """(luma offset, luma span, chroma centre, chroma span) in code values."""
    if full:
        top = float(2 ** fmt.bits - 1)
        return 0.0, top, float(2 ** (fmt.bits - 1)), top
    k = float(2 ** (fmt.bits - 8))
    return 16 * k, 219 * k, 128 * k, 224 * k


def _matrix(kr: float, kb: float) -> np.ndarray:
    """R'G'B' -> Y' Cb Cr (Cb, Cr in [-0.5, 0.5])."""
    kg = 1.0 - kr - kb
    return np.array([[kr, kg, kb],
                     [-kr / (2 - 2 * kb), -kg / (2 - 2 * kb), 0.5],
                     [0.5, -kg / (2 - 2 * kr), -kb / (2 - 2 * kr)]], np.float64)


def _apply(m: np.ndarray, x: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """``m @ x + offset`` over ``[3, H, W]`` in float32, one matrix product (BLAS) for the whole frame."""
    _, h, w = x.shape
    out = (m.astype(np.float32) @ x.reshape(3, h * w)).reshape(len(m), h, w)
    out += offset.astype(np.float32)[:, None, None]
    return out


def to_rgb(frame: av.VideoFrame, color: Color | None = None) -> np.ndarray:
    """A decoded PyAV frame -> float32 ``[3, H, W]`` R'G'B' in [0, 1], at the frame's own depth."""
    fmt = layout(frame.format.name)
    if fmt is None:  # packed / semi-planar / alpha formats: FFmpeg unpacks them, depth kept
        deep = bits_of(frame.format.name) > 8  # FFmpeg widens yuv samples by shifting (x << 8): range kept
        target = ("gbrp16le" if deep else "gbrp") if frame.format.is_rgb else ("yuv444p16le" if deep else "yuv444p")
        color = color or frame_color(frame)
        frame = frame.reformat(format=target)
        fmt = layout(target)
    color = color or frame_color(frame)
    h, w = frame.height, frame.width
    planes = read_planes(frame, fmt)
    if fmt.family == "gbr":
        g, b, r = planes[:3]
        out = np.stack([r, g, b]).astype(np.float32)
        out *= 1.0 / float(2 ** fmt.bits - 1)
        return np.clip(out, 0.0, 1.0, out=out)
    y0, ys, c0, cs = _scales(fmt, color.full(fmt))
    if fmt.family == "gray":
        y = (planes[0].astype(np.float32) - y0) / ys
        return np.clip(np.repeat(y[None], 3, axis=0), 0.0, 1.0)
    codes = np.empty((3, h, w), np.float32)  # Y', Cb, Cr as code values, chroma at full size
    codes[0] = planes[0]
    for k in (1, 2):
        codes[k] = _upsample(planes[k].astype(np.float32), fmt.sub_x, fmt.sub_y, h, w)
    # code values -> R'G'B': the inverse matrix with the range's offsets and spans folded in
    m = np.linalg.inv(_matrix(*color.kr_kb(h))) / np.array([ys, cs, cs])
    out = _apply(m, codes, -m @ np.array([y0, c0, c0]))
    return np.clip(out, 0.0, 1.0, out=out)


def from_rgb(rgb: np.ndarray, pix_fmt: str, color: Color):
    """float32 ``[3, H, W]`` R'G'B' -> a PyAV frame of ``pix_fmt`` tagged with ``color``."""
    import av

    fmt = layout(pix_fmt)
    if fmt is None:
        raise HRXError(f"--pix-fmt {pix_fmt}: only planar YUV, gray and GBR formats are written "
                       "(e.g. yuv420p, yuv420p10le, yuv444p, gbrp)")
    rgb = np.clip(rgb, 0.0, 1.0, dtype=np.float32)
    _, h, w = rgb.shape
    top = float(2 ** fmt.bits - 1)
    if fmt.family == "gbr":
        rgb *= top
        planes = [rgb[1], rgb[2], rgb[0]]
    else:
        y0, ys, c0, cs = _scales(fmt, color.full(fmt))
        m = _matrix(*color.kr_kb(h)) * np.array([ys, cs, cs])[:, None]  # R'G'B' -> code values
        if fmt.family == "gray":
            planes = [_apply(m[:1], rgb, np.array([y0]))[0]]
        else:
            codes = _apply(m, rgb, np.array([y0, c0, c0]))
            planes = [codes[0]] + [_downsample(codes[k], fmt.sub_x, fmt.sub_y) for k in (1, 2)]
    frame = av.VideoFrame(w, h, pix_fmt)
    for plane, values in zip(frame.planes, planes):
        item = np.dtype(fmt.dtype).itemsize
        view = np.frombuffer(plane, np.dtype(fmt.dtype).newbyteorder("<"))  # the frame's own memory
        view = view[:plane.height * (plane.line_size // item)].reshape(plane.height, plane.line_size // item)
        values = values[:plane.height, :plane.width]
        view[:, :plane.width] = np.clip(np.rint(values), 0, top)
    tag(frame, color)
    return frame


def tag(target: av.VideoFrame | av.codec.CodecContext, color: Color) -> None:
    """Set the colour tags on a frame or a codec context."""
    target.colorspace, target.color_primaries = color.space, color.primaries
    target.color_trc, target.color_range = color.trc, color.range


# -- HDR metadata -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HdrInfo:
    """Mastering display (SMPTE ST 2086) and content light level of a stream, from its first frame."""

    primaries: tuple[float, ...] | None = None  # Rx, Ry, Gx, Gy, Bx, By, white x, white y (CIE 1931)
    luminance: tuple[float, float] | None = None  # min, max cd/m2
    light: tuple[int, int] | None = None  # MaxCLL, MaxFALL cd/m2

    def __bool__(self) -> bool:
        return bool(self.primaries or self.luminance or self.light)


def side_data(frame) -> list:
    """The side-data entries of a decoded frame. PyAV's container is a mapping of type -> entry; iterating it
    gives the entries up to PyAV 18.1.0 (whose ``values()`` then fails) and the types from 18.1.1."""
    container = frame.side_data
    return [item if hasattr(item, "type") else container[item] for item in container]


def hdr_info(frame: av.VideoFrame) -> HdrInfo:
    """Read AVMasteringDisplayMetadata / AVContentLightMetadata from a decoded frame's side data."""
    primaries = luminance = light = None
    for item in side_data(frame):
        name = getattr(item.type, "name", str(item.type))
        raw = bytes(item)
        if name == "MASTERING_DISPLAY_METADATA" and len(raw) >= 88:
            v = np.frombuffer(raw[:88], "<i4")  # 10 rationals (R, G, B, white xy; min, max), has_primaries, has_luminance
            q = [float(v[2 * k]) / float(v[2 * k + 1]) if v[2 * k + 1] else 0.0 for k in range(10)]
            if v[20]:
                primaries = tuple(q[:8])
            if v[21]:
                luminance = (q[8], q[9])
        elif name == "CONTENT_LIGHT_LEVEL" and len(raw) >= 8:
            light = tuple(int(x) for x in np.frombuffer(raw[:8], "<u4"))
    return HdrInfo(primaries, luminance, light)


def hdr_encoder_options(codec: str, hdr: HdrInfo) -> dict[str, str] | None:
    """Encoder options that write ``hdr`` into the bitstream (x265 SEI, SVT-AV1 metadata OBUs); ``None``
    when ``codec`` has no such option (the caller warns)."""
    if not hdr:
        return {}
    if codec == "libx265":
        parts = []
        if hdr.primaries and hdr.luminance:
            rx, ry, gx, gy, bx, by, wx, wy = (round(c * 50000) for c in hdr.primaries)
            lo, hi = (round(x * 10000) for x in hdr.luminance)
            parts.append(f"master-display=G({gx},{gy})B({bx},{by})R({rx},{ry})WP({wx},{wy})L({hi},{lo})")
        if hdr.light:
            parts.append(f"max-cll={hdr.light[0]},{hdr.light[1]}")
        return {"x265-params": ":".join(parts)} if parts else {}
    if codec == "libsvtav1":
        parts = []
        if hdr.primaries and hdr.luminance:
            rx, ry, gx, gy, bx, by, wx, wy = hdr.primaries
            lo, hi = hdr.luminance
            parts.append(f"mastering-display=G({gx:.4f},{gy:.4f})B({bx:.4f},{by:.4f})R({rx:.4f},{ry:.4f})"
                         f"WP({wx:.4f},{wy:.4f})L({hi:.4f},{lo:.4f})")
        if hdr.light:
            parts.append(f"content-light={hdr.light[0]},{hdr.light[1]}")
        return {"svtav1-params": ":".join(parts)} if parts else {}
    return None
