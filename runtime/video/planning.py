"""Planning one video from its packets alone (no decoding past the first frame): the stream, its frame
timestamps cut at key frames into :class:`Segment` s, the encoder and pixel format, the output size,
colour tags and orientation (the display matrix), all in one :class:`VideoPlan`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from hrx.errors import HRXError
from hrx.runtime.picture import output_size
from hrx.runtime.video.color import (BT601, BT709, JPEG, MPEG, Color, HdrInfo, bits_of, frame_color, side_data,
                                     hdr_encoder_options, hdr_info, layout)
from hrx.runtime.video.options import FALLBACK_CODEC, SAME_FAMILY, VideoOptions

@dataclass(frozen=True)
class Segment:
    index: int
    start: int  # pts of its first frame (stream time base)
    end: int | None  # pts of the next segment's first frame (excluded); None: to the end of the range
    frames: int


@dataclass(frozen=True)
class Orientation:
    """How a stream's frames are turned upright, as players show them (its display matrix, the rotation
    of a phone video): the stored frame's axes swapped, then mirrored left-right and / or top-bottom."""

    transpose: bool = False
    flip_x: bool = False
    flip_y: bool = False

    @staticmethod
    def from_matrix(matrix) -> Orientation | None:
        """From FFmpeg's display matrix (9 integers, ``AV_FRAME_DATA_DISPLAYMATRIX``: a stored pixel
        ``(x, y)`` is shown at ``(a x + c y, b x + d y)`` with ``a, b, c, d = m[0], m[1], m[3], m[4]``);
        None where it is not a quarter turn (with or without a mirror)."""
        a, b, c, d = (int(matrix[i]) for i in (0, 1, 3, 4))
        straight, crossed = max(abs(a), abs(d)), max(abs(b), abs(c))
        if crossed <= 0.02 * straight:  # within about 1 degree of upright, as FFmpeg's autorotate
            return Orientation(False, a < 0, d < 0)
        if straight <= 0.02 * crossed:  # shown x follows stored y (sign c), shown y stored x (sign b)
            return Orientation(True, c < 0, b < 0)
        return None

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The upright frame's ``(width, height)``."""
        return (height, width) if self.transpose else (width, height)

    def sample_aspect_ratio(self, sar: Fraction | None) -> Fraction | None:
        """The upright frame's pixel shape (a quarter turn swaps the pixels' width and height)."""
        return 1 / sar if sar and self.transpose else sar

    def upright(self, planes: np.ndarray) -> np.ndarray:
        """``planes`` ``[C, H, W]`` turned upright."""
        if self.transpose:
            planes = planes.transpose(0, 2, 1)
        if self.flip_y:
            planes = planes[:, ::-1]
        if self.flip_x:
            planes = planes[:, :, ::-1]
        return np.ascontiguousarray(planes) if self != UPRIGHT else planes

    def describe(self) -> str:
        """``"rotated 90° counter-clockwise"``: what turning the stored frame upright does ("" for nothing)."""
        return _TURNS[(self.transpose, self.flip_x, self.flip_y)]


UPRIGHT = Orientation()
_TURNS = {(False, False, False): "", (False, True, False): "mirrored left-right",
          (False, False, True): "mirrored top-bottom", (False, True, True): "rotated 180°",
          (True, False, True): "rotated 90° counter-clockwise", (True, True, False): "rotated 90° clockwise",
          (True, False, False): "rotated 90° clockwise and mirrored left-right",
          (True, True, True): "rotated 90° counter-clockwise and mirrored left-right"}


@dataclass(frozen=True)
class VideoPlan:
    source: str
    stream: int  # index of the video stream in the input
    time_base: Fraction
    rate: Fraction | None  # average frame rate, for the encoder's rate control
    width: int  # as stored (the decoded frames')
    height: int
    orientation: Orientation  # how decoded frames are turned upright (the display matrix); out_* are upright
    sar: Fraction | None  # the output's sample aspect ratio: the input's, of the upright frame (None: not set)
    in_pix_fmt: str
    color: Color  # the input's tags: how frames are decoded
    out_color: Color  # how frames are encoded and tagged (the input's, unless RGB becomes YUV or back)
    hdr: HdrInfo  # mastering display / content light of the input, written again where the encoder can
    codec: str  # encoder
    pix_fmt: str  # output pixel format
    out_width: int
    out_height: int
    frames: int
    first_pts: int  # the stream's first frame
    range_start: float | None  # time span kept of the other streams, seconds (None: from the start / to the end)
    range_end: float | None
    segments: tuple[Segment, ...]



def open_input(path: Path):
    """``av.open`` with one-line errors naming the file."""
    import av

    if not path.exists():
        raise HRXError(f"{path}: no such file")
    try:
        return av.open(str(path), metadata_errors="replace")
    except av.FFmpegError as e:
        raise HRXError(f"{path}: cannot open as a video ({ffmpeg_reason(e)})") from None


def ffmpeg_reason(e: BaseException) -> str:
    """The first line of an FFmpeg (or any) error's message, for a one-line error."""
    import av

    if isinstance(e, av.FFmpegError):
        text = e.strerror or str(e)
    else:
        text = str(e) or type(e).__name__
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def video_stream(container, path: Path):
    """The main video stream (not a cover picture); one-line error when there is none."""
    for s in container.streams.video:
        if not s.disposition & 1024:  # AV_DISPOSITION_ATTACHED_PIC
            return s
    raise HRXError(f"{path}: no video stream")


def _timestamps(container, stream, path: Path, warn) -> tuple[list[int], set[int]]:
    """Presentation timestamps of the stream's frames (sorted) and those of its key frames, from packets."""
    import av

    stamps: set[int] = set()
    keys: set[int] = set()
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            ts = packet.pts if packet.pts is not None else packet.dts
            if ts is None:
                raise HRXError(f"{path}: video packets without timestamps")
            stamps.add(ts)
            if packet.is_keyframe:
                keys.add(ts)
    except av.FFmpegError as e:  # damaged tail: what was read is planned, decoding counts the losses
        if warn:
            warn(f"{path}: demuxing stopped early ({ffmpeg_reason(e)}); frames after that point are not in the plan")
    if not stamps:
        raise HRXError(f"{path}: the video stream has no frames")
    return sorted(stamps), keys


def _select(pts: list[int], time_base: Fraction, options: VideoOptions) -> tuple[int, int]:
    """``[lo, hi)`` indices of the frames kept."""
    if options.frames is not None:
        lo, hi = options.frames[0], options.frames[1] if options.frames[1] is not None else len(pts)
    else:
        lo, hi = 0, len(pts)
        if options.start is not None:
            lo = _first_at(pts, time_base, options.start)
        if options.end is not None:
            hi = _first_at(pts, time_base, options.end)
    hi = min(hi, len(pts))
    if lo >= hi:
        raise HRXError(f"the range selects no frames (the video has {len(pts)})")
    return lo, hi


def _first_at(pts: list[int], time_base: Fraction, seconds: float) -> int:
    """Index of the first frame at or after ``seconds`` from the first frame (``len(pts)``: none)."""
    at = Fraction(str(seconds))  # the decimal the user typed, not its binary float
    return next((i for i, p in enumerate(pts) if (p - pts[0]) * time_base >= at), len(pts))


def plan_segments(pts: list[int], keys: set[int], lo: int, hi: int, size: int, total: int) -> tuple[Segment, ...]:
    """Segments of frames ``pts[lo:hi]``: each starts at a key frame (the first anywhere) and holds at
    least ``size`` frames (the last may hold fewer)."""
    starts = [lo]
    for i in range(lo + 1, hi):
        if i - starts[-1] >= size and pts[i] in keys:
            starts.append(i)
    bounds = starts + [hi]
    return tuple(Segment(k, pts[a], pts[b] if b < total else None, b - a)
                 for k, (a, b) in enumerate(zip(bounds, bounds[1:])))


def choose_encoder(in_codec: str, in_pix_fmt: str, options: VideoOptions) -> tuple[str, str]:
    """``(encoder, pixel format)``: ``options``' or the input's family and format; a format the encoder
    cannot take becomes its closest one of the same depth (with a warning)."""
    import av

    name = options.codec or SAME_FAMILY.get(in_codec, FALLBACK_CODEC)
    try:
        codec = av.codec.Codec(name, "w")
    except Exception:  # noqa: BLE001 - UnknownCodecError and friends
        raise HRXError(f"--video-codec {name}: this FFmpeg build has no such encoder "
                       "(PyAV's wheel has libx264, libx265, libsvtav1, ffv1, prores_ks, libvpx-vp9)") from None
    if codec.type != "video":
        raise HRXError(f"--video-codec {name}: not a video encoder")
    formats = [f.name for f in (codec.video_formats or ())]
    writable = [f for f in formats if layout(f) is not None]
    wanted = options.pix_fmt or in_pix_fmt
    if options.pix_fmt is not None:
        if formats and wanted not in formats:
            raise HRXError(f"--pix-fmt {wanted}: {name} takes {', '.join(formats)}")
        if layout(wanted) is None:
            raise HRXError(f"--pix-fmt {wanted}: only planar YUV, gray and GBR formats are written")
        return name, wanted
    if wanted.startswith("yuvj"):  # the deprecated full-range names: same samples, the range is a tag
        wanted = "yuv" + wanted[4:]
    if wanted in writable or (not formats and layout(wanted) is not None):
        return name, wanted
    bits = bits_of(in_pix_fmt)
    base = layout(wanted)
    candidates = sorted(writable, key=lambda f: (abs(bits_of(f) - bits) + (8 if bits_of(f) < bits else 0),
                                                 0 if base and layout(f).family == base.family
                                                 and (layout(f).sub_x, layout(f).sub_y) == (base.sub_x, base.sub_y)
                                                 else 1))
    if not candidates:
        raise HRXError(f"--video-codec {name}: none of its pixel formats can be written ({', '.join(formats)})")
    choice = candidates[0]
    if options.warn is not None:
        options.warn(f"{name} cannot encode {in_pix_fmt}: writing {choice} (--pix-fmt to choose)")
    return name, choice


def probe(source: Path, options: VideoOptions, scale: int) -> VideoPlan:
    """Plan the upscaling of ``source`` (model ``scale``): timestamps, segments, encoder, sizes."""
    with open_input(source) as container:
        stream = video_stream(container, source)
        time_base = stream.time_base
        rate = stream.average_rate or stream.guessed_rate
        in_codec = stream.codec_context.codec.canonical_name
        sar = Fraction(stream.sample_aspect_ratio or 0) or None  # container's, else the codec's; 0: unknown
        width, height, fmt_name, index, color, hdr, matrix = _first_frame(container, stream, source, options.warn)
    with open_input(source) as container:  # from the start again: packets only
        pts, keys = _timestamps(container, container.streams[index], source, options.warn)
    lo, hi = _select(pts, time_base, options)
    segments = plan_segments(pts, keys, lo, hi, options.segment_frames, len(pts))
    codec, pix_fmt = choose_encoder(in_codec, fmt_name, options)
    if hdr and hdr_encoder_options(codec, hdr) is None and options.warn is not None:
        options.warn(f"{source}: {codec} cannot write the HDR mastering display / light level metadata "
                     "(libx265 and libsvtav1 can); the colour tags are kept")
    orientation = orientation_of(matrix, source, options.warn)
    out_w, out_h = output_size(*orientation.size(width, height), scale, options.resize)
    fmt = layout(pix_fmt)
    out_w, out_h = _even(out_w, fmt.sub_x), _even(out_h, fmt.sub_y)
    ranged = lo > 0 or hi < len(pts)
    to_s = lambda i: float(pts[i] * time_base) if i < len(pts) else None  # noqa: E731
    return VideoPlan(str(source), index, time_base, Fraction(rate) if rate else None, width, height, orientation,
                     orientation.sample_aspect_ratio(sar), fmt_name, color, output_color(color, fmt_name, pix_fmt, out_h),
                     hdr, codec, pix_fmt, out_w, out_h, hi - lo, pts[0], to_s(lo) if ranged else None,
                     to_s(hi) if ranged else None, segments)


def output_color(color: Color, in_pix_fmt: str, out_pix_fmt: str, out_height: int) -> Color:
    """The input's tags, with the matrix made explicit where RGB input becomes YUV (BT.709 from 720 lines,
    else BT.601) or YUV input becomes RGB (matrix "RGB", full range)."""
    src, dst = layout(in_pix_fmt), layout(out_pix_fmt)
    src_rgb = src.family == "gbr" if src is not None else color.space == 0
    if dst.family == "gbr" and not src_rgb:
        return dataclasses.replace(color, space=0, range=JPEG)
    if dst.family != "gbr" and src_rgb:
        return dataclasses.replace(color, space=BT709 if out_height >= 720 else BT601, range=MPEG)
    return color


def _even(n: int, multiple: int) -> int:
    return max(multiple, n - n % multiple)


def orientation_of(matrix, source: Path, warn) -> Orientation:
    """How frames with the display ``matrix`` (None: none) are turned upright; a turn that is not a quarter
    turn is named in a warning and the frames are kept as stored."""
    if matrix is None:
        return UPRIGHT
    orientation = Orientation.from_matrix(matrix)
    if orientation is None:
        if warn is not None:
            import math

            angle = math.degrees(math.atan2(int(matrix[1]), int(matrix[0])))
            warn(f"{source}: its display matrix turns it by {angle:.0f}°, not a quarter turn: written as stored")
        return UPRIGHT
    return orientation


def display_matrix(frame) -> tuple[int, ...] | None:
    """The frame's display matrix (9 integers, FFmpeg's layout), None when it has none."""
    for item in side_data(frame):
        if getattr(item.type, "name", str(item.type)) == "DISPLAYMATRIX":
            raw = bytes(item)
            return tuple(int(v) for v in np.frombuffer(raw[:36], "<i4")) if len(raw) >= 36 else None
    return None


def _first_frame(container, stream, source: Path, warn) -> tuple[int, int, str, int, Color, HdrInfo, tuple | None]:
    import av

    try:
        for frame in container.decode(stream):
            if frame.interlaced_frame and warn is not None:
                warn(f"{source}: interlaced video is upscaled as progressive frames (deinterlace it first for "
                     "a clean result)")
            return (frame.width, frame.height, frame.format.name, stream.index, _stream_color(frame, stream),
                    hdr_info(frame), display_matrix(frame))
    except av.FFmpegError as e:
        raise HRXError(f"{source}: cannot decode the video stream ({ffmpeg_reason(e)})") from None
    raise HRXError(f"{source}: the video stream has no decodable frame")


def _stream_color(frame, stream) -> Color:
    """The frame's colour tags, the stream's where the frame has none."""
    f, c = frame_color(frame), stream.codec_context
    return Color(f.space if f.space != 2 else int(c.colorspace), f.primaries if f.primaries != 2 else int(c.color_primaries),
                 f.trc if f.trc != 2 else int(c.color_trc), f.range or int(c.color_range))
