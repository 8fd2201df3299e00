"""Upscale a video: decode, the tiled model, encode, in closed segments that a later run resumes.

One video is planned from its packets alone (no decoding): the video stream's frame timestamps, cut
at key frames into segments of about ``segment_frames`` frames. Each segment runs as three threads
joined by bounded queues (memory does not grow with the video's length)::

    decode (seek to the segment, frames -> float RGB)  ->  model (tiled runtime)  ->  encode (-> segment file)

Every output frame keeps its input frame's pts in the input's time base (variable frame rate stays
variable). A finished segment is renamed into the work folder ``.NAME.hrx-work`` beside the output; a
run that is killed or interrupted leaves the finished segments there, and the same command continues
from them. When every segment is there, :func:`hrx.runtime.video.mux.join` writes the output (the
segments' video with every other stream of the input copied) to a temporary name and renames it: only
a complete file ever appears at the output path. One run makes an output at a time: its work folder
carries an exclusive lock (``flock``, :func:`video_lock`), and a second run on the same output fails that
video in one line (:class:`~hrx.errors.OutputBusy`) without touching the folder.

Frames that cannot be decoded (corrupt packets) are counted and reported as lost frames (``strict``:
the video fails); a model error fails the video, never drops a frame.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import queue
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np

from hrx.errors import HRXError, one_line
from hrx.paths import OutputLock, atomic_write, atomic_write_bytes, hold_lock
from hrx.interface import Backend
from hrx.runtime.pipeline import BatchOptions, output_size, resample_planes, upscale_picture
from hrx.runtime.images import Picture
from hrx.runtime.tiling import NonFiniteOutput, TileSpec, check_finite, upscale_tiled, upscale_whole
from hrx.runtime.video.color import (BT601, BT709, JPEG, MPEG, Color, HdrInfo, bits_of, frame_color, from_rgb,
                                     hdr_encoder_options, hdr_info, layout, tag, to_rgb)

DEFAULT_SEGMENT_FRAMES = 240
DECODED_FRAMES = 4  # decoded frames waiting for the model
UPSCALED_FRAMES = 2  # upscaled frames waiting for the encoder (float, scale^2 times larger)
# --video-codec default for an input codec (canonical FFmpeg name): the same family
SAME_FAMILY = {"h264": "libx264", "hevc": "libx265", "av1": "libsvtav1", "ffv1": "ffv1", "prores": "prores_ks",
               "vp9": "libvpx-vp9"}
FALLBACK_CODEC = "libx264"


@dataclass(frozen=True)
class VideoOptions:
    codec: str | None = None  # encoder; None: the input's codec family (else libx264)
    crf: int | None = None
    preset: str | None = None
    pix_fmt: str | None = None  # None: the input's (where the encoder takes it)
    codec_options: tuple[tuple[str, str], ...] = ()  # --video-opt KEY=VALUE
    frames: tuple[int, int | None] | None = None  # [first, last) frame numbers (presentation order)
    start: float | None = None  # seconds from the stream's first frame
    end: float | None = None
    segment_frames: int = DEFAULT_SEGMENT_FRAMES
    strict: bool = False  # lost frames or a stream the output cannot hold fail the video
    resize: BatchOptions = BatchOptions()  # outscale / width / height (the images' options)
    warn: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        if self.segment_frames < 1:
            raise HRXError("--segment-frames must be >= 1")
        if self.frames is not None and (self.start is not None or self.end is not None):
            raise HRXError("pass either --frames or --start/--end, not both")
        if self.frames is not None and (self.frames[0] < 0 or (self.frames[1] is not None
                                                                and self.frames[1] <= self.frames[0])):
            raise HRXError(f"--frames {self.frames[0]}:{self.frames[1]}: expected A:B with 0 <= A < B")


def parse_frames(text: str) -> tuple[int, int | None]:
    """``"A:B"`` (``B`` excluded; either may be empty) -> ``(A, B or None)``."""
    try:
        a, b = text.split(":")
        return int(a or 0), (int(b) if b else None)
    except ValueError:
        raise HRXError(f"--frames {text!r}: expected A:B (frame numbers, B excluded), e.g. 0:100") from None


def parse_codec_options(items: list[str] | None) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HRXError(f"--video-opt {item!r}: expected KEY=VALUE (e.g. tune=film)")
        out.append((key, value))
    return tuple(out)


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


@dataclass
class VideoResult:
    source: str
    output: str
    status: str = "failed"  # "done", "failed", "skipped"
    reason: str = ""
    frames: int = 0
    lost_frames: int = 0
    segments: int = 0
    resumed_segments: int = 0  # segments found finished in the work folder
    width: int = 0
    height: int = 0
    out_width: int = 0
    out_height: int = 0
    codec: str = ""
    pix_fmt: str = ""
    orientation: str = ""  # how the frames were turned upright (the display matrix): "rotated 90° clockwise"
    sar: str = ""  # sample aspect ratio kept ("16:15"; "" where the input sets none)
    dropped_streams: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


class VideoProgress(Protocol):
    """What the video pipeline reports as it goes (any object with these methods will do); here they do nothing."""

    def start_video(self, source: Path, frames: int) -> None: ...

    def advance_frames(self, n: int) -> None: ...


class NoVideoProgress(VideoProgress):
    """Reports nothing."""


# -- planning -----------------------------------------------------------------------------------------

def open_input(path: Path):
    """``av.open`` with one-line errors naming the file."""
    import av

    if not path.exists():
        raise HRXError(f"{path}: no such file")
    try:
        return av.open(str(path), metadata_errors="replace")
    except av.FFmpegError as e:
        raise HRXError(f"{path}: cannot open as a video ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
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
            warn(f"{path}: demuxing stopped early ({_reason(e)}); frames after that point are not in the plan")
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
    for item in frame.side_data:
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
        raise HRXError(f"{source}: cannot decode the video stream ({_reason(e)})") from None
    raise HRXError(f"{source}: the video stream has no decodable frame")


def _stream_color(frame, stream) -> Color:
    """The frame's colour tags, the stream's where the frame has none."""
    f, c = frame_color(frame), stream.codec_context
    return Color(f.space if f.space != 2 else int(c.colorspace), f.primaries if f.primaries != 2 else int(c.color_primaries),
                 f.trc if f.trc != 2 else int(c.color_trc), f.range or int(c.color_range))


# -- one segment --------------------------------------------------------------------------------------

_END = object()


class _Stop(Exception):
    pass


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stop
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event):
    while True:
        if stop.is_set():
            raise _Stop
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue


def _decoded(container, stream, source: Path, strict: bool) -> Iterator:
    """``(timestamp, frame)`` of the stream's frames (pts, else the decoder's dts: AVI has no pts), skipping
    packets that fail to decode (``strict``: one-line error)."""
    import av

    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets, None)
        except av.FFmpegError as e:  # a damaged tail: the frames after it are lost (counted by the caller)
            if strict:
                raise HRXError(f"{source}: corrupt video data, demuxing stopped ({_reason(e)}); without --strict "
                               "the frames lost are skipped and counted") from None
            yield from _flushed(stream)
            return
        if packet is None:
            return
        try:
            frames = packet.decode()
        except av.FFmpegError as e:
            if strict:
                raise HRXError(f"{source}: corrupt video data ({_reason(e)}); without --strict the frames "
                               "lost are skipped and counted") from None
            continue
        for frame in frames:
            ts = frame.pts if frame.pts is not None else frame.dts
            if ts is not None:
                yield ts, frame


def _flushed(stream) -> Iterator:
    """``(timestamp, frame)`` of the frames the decoder still holds, when demuxing stopped early."""
    import av

    try:
        frames = stream.codec_context.decode(None)
    except av.FFmpegError:
        return
    for frame in frames:
        ts = frame.pts if frame.pts is not None else frame.dts
        if ts is not None:
            yield ts, frame


def decode_segment(plan: VideoPlan, segment: Segment, strict: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """``(pts, float RGB [3, H, W])`` of every decodable frame of ``segment`` in presentation order, turned
    upright (``plan.orientation``).
    Seeks to the key frame at or before the segment's start; when a container cannot seek there (or
    lands after it) the video is decoded from its start. Corrupt packets are skipped (``strict``: error)."""
    import av

    source = Path(plan.source)
    for seek in ((True, False) if segment.start > plan.first_pts else (False,)):
        with open_input(source) as container:
            stream = container.streams[plan.stream]
            stream.thread_type = "AUTO"
            if seek:
                try:
                    container.seek(segment.start, stream=stream, backward=True)
                except av.FFmpegError:
                    continue
            frames = _decoded(container, stream, source, strict)
            first = next(frames, None)
            if first is None:
                return
            if seek and first[0] > segment.start:
                continue
            last = None
            for ts, frame in itertools.chain([first], frames):
                if ts < segment.start or (last is not None and ts <= last):  # a repeated stamp (broken muxing)
                    continue
                if segment.end is not None and ts >= segment.end:
                    return
                last = ts
                yield ts, plan.orientation.upright(to_rgb(frame, plan.color))
            return


SEGMENT_FORMAT = "matroska"  # holds every codec; its millisecond clock is why the timestamps go beside it


def open_encoder(container, plan: VideoPlan, options: VideoOptions):
    """The output video stream of ``container``, set up from ``plan`` and ``options``."""
    stream = container.add_stream(plan.codec, rate=plan.rate) if plan.rate else container.add_stream(plan.codec)
    stream.width, stream.height, stream.pix_fmt = plan.out_width, plan.out_height, plan.pix_fmt
    stream.time_base = plan.time_base
    ctx = stream.codec_context
    ctx.time_base = plan.time_base
    if plan.rate:
        ctx.framerate = plan.rate
    tag(ctx, plan.out_color)
    if plan.sar is not None:  # both axes scale alike: the pixel shape stays the input's
        ctx.sample_aspect_ratio = plan.sar
    opts = {}
    if options.crf is not None:
        opts["crf"] = str(options.crf)
    if options.preset is not None:
        opts["preset"] = options.preset
    if plan.codec == "libx265":
        opts["x265-params"] = "log-level=error"  # x265 prints its settings to stderr for every segment
    elif plan.codec == "libsvtav1":
        os.environ.setdefault("SVT_LOG", "1")  # errors only (SVT-AV1 reads its log level from the environment)
    for key, value in (hdr_encoder_options(plan.codec, plan.hdr) or {}).items():
        opts[key] = f"{opts[key]}:{value}" if key in opts else value
    for key, value in options.codec_options:  # the user's; x265-params / svtav1-params add to the HDR ones
        opts[key] = f"{opts[key]}:{value}" if key in opts and key.endswith("-params") else value
    stream.options = opts
    return stream


class FrameUpscaler:
    """One frame through the tiled model: the pipeline's channel mapping, then resize if asked."""

    def __init__(self, backend: Backend, spec: TileSpec, plan: VideoPlan) -> None:
        self.backend, self.spec, self.plan = backend, spec, plan

    def run_planes(self, x: np.ndarray) -> np.ndarray:
        if self.backend.any_tile and max(x.shape[1:]) <= self.spec.tile:
            return upscale_whole(x, self.backend.infer, self.spec)
        return upscale_tiled(x, self.backend.infer, self.spec, None, self.backend.infer_many)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        info = self.backend.info
        picture = Picture(rgb.transpose(1, 2, 0), None, 16)
        out = upscale_picture(picture, self.run_planes, info.in_channels, info.scale).color.transpose(2, 0, 1)
        return self._sized(out)

    def _sized(self, out: np.ndarray) -> np.ndarray:
        if out.shape[1:] != (self.plan.out_height, self.plan.out_width):
            out, _ = resample_planes(np.clip(out, 0.0, 1.0), (self.plan.out_width, self.plan.out_height))
        return out

    @property
    def frames_per_call(self) -> int:
        """Whole frames per inference call: the backend's batch when it takes any size (PyTorch), the frame
        fits in one tile and the model is RGB in and out; else 1 (the tiles of a frame are batched)."""
        i = self.backend.info
        if self.backend.any_tile and max(self.plan.width, self.plan.height) <= self.spec.tile \
                and i.in_channels == 3 and i.out_channels == 3:
            return self.spec.batch
        return 1

    def many(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Several frames of one size, ``[3, H, W]`` each, in one call when :attr:`frames_per_call` allows:
        padded at the bottom / right by reflection as :func:`upscale_whole` pads one frame."""
        if len(frames) == 1 or self.frames_per_call == 1:
            return [self(f) for f in frames]
        x = np.stack(frames)  # [N, 3, H, W]
        _, _, h, w = x.shape
        m, s = max(1, self.spec.size_multiple), self.spec.scale
        if h % m or w % m:
            x = np.pad(x, ((0, 0), (0, 0), (0, -h % m), (0, -w % m)), mode="reflect")
        y = np.asarray(self.backend.infer(np.ascontiguousarray(x, dtype=np.float32)))  # [N, 3, Hp*s, Wp*s]
        check_finite(y[:len(frames)], lambda k: f"frame {k + 1} of the {len(frames)} in one call")
        return [self._sized(out[:, :h * s, :w * s]) for out in y]


def encode_segment(backend: Backend, spec: TileSpec, plan: VideoPlan, segment: Segment, target: str,
                   options: VideoOptions, progress: VideoProgress | None = None) -> tuple[int, list]:
    """Upscale ``segment`` into the file ``target`` (decode, model and encode overlapping on three
    threads); returns the number of frames written and every packet's ``(pts, dts, duration)`` in the
    input's time base (the segment container rounds them to milliseconds; the join restores them)."""
    import av

    progress = progress or NoVideoProgress()
    stop = threading.Event()
    decoded: queue.Queue = queue.Queue(DECODED_FRAMES)
    upscaled: queue.Queue = queue.Queue(UPSCALED_FRAMES)
    errors: list[BaseException] = []
    written = [0]
    stamps: list[tuple[int | None, int | None, int]] = []  # (pts, dts, duration) of every packet, stream time base

    def mux(out, packets) -> None:
        for packet in packets:
            stamps.append((packet.pts, packet.dts, packet.duration or 0))
            out.mux(packet)

    def decode() -> None:
        try:
            for item in decode_segment(plan, segment, options.strict):
                _put(decoded, item, stop)
            _put(decoded, _END, stop)
        except _Stop:
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the model thread
            errors.append(e)
            stop.set()

    def encode() -> None:
        try:
            with av.open(target, "w", format=SEGMENT_FORMAT) as out:
                stream = open_encoder(out, plan, options)
                while (item := _get(upscaled, stop)) is not _END:
                    pts, rgb = item
                    frame = from_rgb(rgb, plan.pix_fmt, plan.out_color)
                    frame.pts, frame.time_base = pts, plan.time_base
                    mux(out, stream.encode(frame))
                    written[0] += 1
                mux(out, stream.encode(None))
        except _Stop:
            pass
        except av.FFmpegError as e:
            errors.append(HRXError(f"{plan.source}: the {plan.codec} encoder failed ({_reason(e)})"))
            stop.set()
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=decode, name="hrx-video-decode", daemon=True),
               threading.Thread(target=encode, name="hrx-video-encode", daemon=True)]
    model = FrameUpscaler(backend, spec, plan)
    for t in threads:
        t.start()
    per_call = model.frames_per_call
    try:
        ended = False
        while not ended:
            items = []
            while len(items) < per_call:
                item = _get(decoded, stop)
                if item is _END:
                    ended = True
                    break
                items.append(item)
            if items:
                try:
                    outs = model.many([rgb for _, rgb in items])
                except NonFiniteOutput as e:  # which frame: its timestamp (the first of a batch of frames)
                    raise e.at(f"frame at pts {items[0][0]} of segment {segment.index}") from e
                for (pts, _), out in zip(items, outs):
                    _put(upscaled, (pts, out), stop)
                progress.advance_frames(len(items))
            del items
        _put(upscaled, _END, stop)
    except _Stop:
        pass
    except BaseException:
        stop.set()
        raise
    finally:
        for t in threads:
            while t.is_alive():
                t.join(0.1)
    if errors:
        raise errors[0]
    return written[0], stamps


# -- one video ----------------------------------------------------------------------------------------

def work_folder(output: Path) -> Path:
    """Where the finished segments of ``output`` wait: a hidden folder beside it."""
    return output.parent / f".{output.name}.hrx-work"


def _fingerprint(plan: VideoPlan, options: VideoOptions, spec: TileSpec, info, model_id: str) -> str:
    st = Path(plan.source).stat()
    key = {"source": str(Path(plan.source).resolve()), "size": st.st_size, "mtime": st.st_mtime_ns,
           "plan": repr(plan), "codec": [options.crf, options.preset, list(options.codec_options)],
           "spec": repr(spec), "model": [model_id, repr(info)]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def video_lock(output: Path) -> OutputLock:
    """The lock of ``output`` while it is made: on its work folder (made here; removed when the video is
    done, or when nothing was finished in it). Another run holding it: :class:`~hrx.errors.OutputBusy`."""
    return hold_lock(work_folder(output), output, folder=True)


def prepare_work(output: Path, fingerprint: str) -> Path:
    """The work folder for ``output``, kept when it belongs to the same run (same input, model and
    settings), emptied otherwise (the folder itself stays: it carries the lock, :func:`video_lock`)."""
    work = work_folder(output)
    marker = work / "plan.json"
    if work.is_dir():
        try:
            same = json.loads(marker.read_text()).get("fingerprint") == fingerprint
        except (OSError, ValueError):
            same = False
        if not same:
            for entry in work.iterdir():
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    work.mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        atomic_write_bytes(marker, json.dumps({"fingerprint": fingerprint}).encode())
    return work


def segment_path(work: Path, segment: Segment) -> Path:
    """The segment's video (complete when it exists); its packets' timestamps are in :func:`stamps_path`."""
    return work / f"seg-{segment.index:05d}.mkv"


def stamps_path(segment_file: Path) -> Path:
    return segment_file.with_suffix(".json")


def run_segment(backend: Backend, spec: TileSpec, plan: VideoPlan, segment: Segment, work: Path,
                options: VideoOptions, progress: VideoProgress | None = None) -> int:
    """Encode ``segment`` into the work folder (atomically: a segment file is always complete) and
    return the frames it lost (frames planned, not decodable); ``options.strict``: losing any fails."""
    written = [0]
    path = segment_path(work, segment)

    def write(tmp: str) -> None:
        written[0], stamps = encode_segment(backend, spec, plan, segment, tmp, options, progress)
        lost = segment.frames - written[0]
        if lost and options.strict:
            raise HRXError(f"{plan.source}: {lost} frame(s) of segment {segment.index} could not be decoded "
                           "(corrupt data; without --strict they are skipped)")
        atomic_write_bytes(stamps_path(path), json.dumps({"frames": written[0], "packets": stamps}).encode())

    atomic_write(path, write)
    return segment.frames - written[0]


@dataclass
class VideoRun:
    """One video between planning and the join: its plan, work folder and the frames lost per segment."""

    plan: VideoPlan
    work: Path
    output: Path
    result: VideoResult
    lost: dict[str, int]
    started: float

    def todo(self) -> list[Segment]:
        """The segments not finished yet (by this run or an earlier one)."""
        return [s for s in self.plan.segments if not segment_path(self.work, s).is_file()]

    def record(self, segment: Segment, lost: int) -> None:
        self.lost[str(segment.index)] = lost
        atomic_write_bytes(self.work / "lost.json", json.dumps(self.lost).encode())


def begin_video(info, spec: TileSpec, source: Path, output: Path, options: VideoOptions,
                model_id: str = "") -> VideoRun:
    """Plan ``source`` for a model described by ``info`` and open (or resume) its work folder."""
    result = VideoResult(str(source), str(output))
    plan = probe(source, options, info.scale)
    result.width, result.height, result.out_width, result.out_height = (plan.width, plan.height, plan.out_width,
                                                                        plan.out_height)
    result.codec, result.pix_fmt, result.segments = plan.codec, plan.pix_fmt, len(plan.segments)
    result.orientation = plan.orientation.describe()
    result.sar = f"{plan.sar.numerator}:{plan.sar.denominator}" if plan.sar else ""
    output.parent.mkdir(parents=True, exist_ok=True)
    work = prepare_work(output, _fingerprint(plan, options, spec, info, model_id))
    lost = _read_lost(work / "lost.json")
    run = VideoRun(plan, work, output, result, lost, time.perf_counter())
    result.resumed_segments = len(plan.segments) - len(run.todo())
    return run


def _read_lost(path: Path) -> dict[str, int]:
    """The frames lost per finished segment, from an earlier run's ``lost.json`` (``{}`` when none)."""
    if not path.is_file():
        return {}
    try:
        lost = json.loads(path.read_text())
        if not isinstance(lost, dict) or not all(isinstance(v, int) for v in lost.values()):
            raise ValueError("not a map of segment -> frames")
    except (OSError, ValueError) as e:
        raise HRXError(f"{path}: the resume state is unreadable ({one_line(e)}); delete {path.parent} to start "
                       "this video again") from None
    return lost


def finish_video(run: VideoRun, options: VideoOptions) -> VideoResult:
    """Join the finished segments into the output, remove the work folder; the video's result."""
    from hrx.runtime.video.mux import join

    result, plan = run.result, run.plan
    result.lost_frames = sum(run.lost.get(str(s.index), 0) for s in plan.segments)
    result.frames = plan.frames - result.lost_frames
    if result.lost_frames and options.warn is not None:
        options.warn(f"{plan.source}: {result.lost_frames} frame(s) lost to corrupt data (--strict to fail instead)")
    result.dropped_streams = join(plan, [segment_path(run.work, s) for s in plan.segments], run.output, options)
    shutil.rmtree(run.work, ignore_errors=True)
    result.status = "done"
    result.seconds = time.perf_counter() - run.started
    return result


def upscale_video(backend: Backend, spec: TileSpec, source: Path, output: Path, options: VideoOptions = VideoOptions(),
                  progress: VideoProgress | None = None, model_id: str = "") -> VideoResult:
    """Upscale one video file to ``output``, resuming from a previous run's finished segments; another run
    making the same output: :class:`~hrx.errors.OutputBusy` (:func:`video_lock`)."""
    progress = progress or NoVideoProgress()
    with video_lock(output):
        run = begin_video(backend.info, spec, source, output, options, model_id)
        todo = run.todo()
        progress.start_video(source, run.plan.frames)
        progress.advance_frames(sum(s.frames - run.lost.get(str(s.index), 0) for s in run.plan.segments
                                    if s not in todo))
        for segment in todo:
            run.record(segment, run_segment(backend, spec, run.plan, segment, run.work, options, progress))
        return finish_video(run, options)
