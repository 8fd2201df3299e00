"""One segment of a video: decode (seek, frames -> float RGB, turned upright), the tiled model
(:class:`FrameUpscaler`) and encode (-> the segment file), on three threads joined by bounded queues."""
from __future__ import annotations

import itertools
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from hrx.errors import HRXError
from hrx.interface import Backend
from hrx.runtime.images import Picture
from hrx.runtime.picture import resample_planes, upscale_picture
from hrx.runtime.tiling import NonFiniteOutput, TileSpec, check_finite, upscale_tiled, upscale_whole
from hrx.runtime.video.color import from_rgb, hdr_encoder_options, tag, to_rgb
from hrx.runtime.video.options import NoVideoProgress, VideoOptions, VideoProgress
from hrx.runtime.video.planning import Segment, VideoPlan, ffmpeg_reason, open_input

DECODED_FRAMES = 4  # decoded frames waiting for the model
UPSCALED_FRAMES = 2  # upscaled frames waiting for the encoder (float, scale^2 times larger)

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
                raise HRXError(f"{source}: corrupt video data, demuxing stopped ({ffmpeg_reason(e)}); without --strict "
                               "the frames lost are skipped and counted") from None
            yield from _flushed(stream)
            return
        if packet is None:
            return
        try:
            frames = packet.decode()
        except av.FFmpegError as e:
            if strict:
                raise HRXError(f"{source}: corrupt video data ({ffmpeg_reason(e)}); without --strict the frames "
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


@dataclass
class _Lanes:
    """What a segment's three threads share: the queues between them, the stop flag and the errors of the
    decode and encode threads (the first one is raised)."""

    stop: threading.Event = field(default_factory=threading.Event)
    decoded: queue.Queue = field(default_factory=lambda: queue.Queue(DECODED_FRAMES))
    upscaled: queue.Queue = field(default_factory=lambda: queue.Queue(UPSCALED_FRAMES))
    errors: list[BaseException] = field(default_factory=list)

    def fail(self, e: BaseException) -> None:
        """Keep ``e`` for the caller and stop the other threads."""
        self.errors.append(e)
        self.stop.set()


@dataclass
class _Written:
    """What the encode thread wrote: frames, and every packet's ``(pts, dts, duration)`` (stream time base)."""

    frames: int = 0
    packets: list[tuple[int | None, int | None, int]] = field(default_factory=list)

    def mux(self, out, packets) -> None:
        """Write ``packets`` into ``out``, noting their timestamps first."""
        for packet in packets:
            self.packets.append((packet.pts, packet.dts, packet.duration or 0))
            out.mux(packet)


def _decode_into(plan: VideoPlan, segment: Segment, strict: bool, lanes: _Lanes) -> None:
    """The decode thread: the segment's frames into ``lanes.decoded``, then the end mark."""
    try:
        for item in decode_segment(plan, segment, strict):
            _put(lanes.decoded, item, lanes.stop)
        _put(lanes.decoded, _END, lanes.stop)
    except _Stop:
        pass
    except BaseException as e:  # noqa: BLE001 - handed to the model thread
        lanes.fail(e)


def _encode_from(plan: VideoPlan, options: VideoOptions, target: str, lanes: _Lanes, written: _Written) -> None:
    """The encode thread: the upscaled frames of ``lanes.upscaled`` into the segment file ``target``."""
    import av

    try:
        with av.open(target, "w", format=SEGMENT_FORMAT) as out:
            stream = open_encoder(out, plan, options)
            while (item := _get(lanes.upscaled, lanes.stop)) is not _END:
                pts, rgb = item
                frame = from_rgb(rgb, plan.pix_fmt, plan.out_color)
                frame.pts, frame.time_base = pts, plan.time_base
                written.mux(out, stream.encode(frame))
                written.frames += 1
            written.mux(out, stream.encode(None))
    except _Stop:
        pass
    except av.FFmpegError as e:
        lanes.fail(HRXError(f"{plan.source}: the {plan.codec} encoder failed ({ffmpeg_reason(e)})"))
    except BaseException as e:  # noqa: BLE001
        lanes.fail(e)


def _upscale_frames(model: FrameUpscaler, segment: Segment, per_call: int, lanes: _Lanes,
                    progress: VideoProgress) -> None:
    """The model, on the calling thread: the decoded frames, up to ``per_call`` in one call, upscaled into
    ``lanes.upscaled``, then the end mark."""
    ended = False
    while not ended:
        items = []
        while len(items) < per_call:
            item = _get(lanes.decoded, lanes.stop)
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
                _put(lanes.upscaled, (pts, out), lanes.stop)
            progress.advance_frames(len(items))
        del items
    _put(lanes.upscaled, _END, lanes.stop)


def encode_segment(backend: Backend, spec: TileSpec, plan: VideoPlan, segment: Segment, target: str,
                   options: VideoOptions, progress: VideoProgress | None = None) -> tuple[int, list]:
    """Upscale ``segment`` into the file ``target`` (decode, model and encode overlapping on three
    threads); returns the number of frames written and every packet's ``(pts, dts, duration)`` in the
    input's time base (the segment container rounds them to milliseconds; the join restores them)."""
    progress = progress or NoVideoProgress()
    lanes, written = _Lanes(), _Written()
    threads = [threading.Thread(target=_decode_into, args=(plan, segment, options.strict, lanes),
                                name="hrx-video-decode", daemon=True),
               threading.Thread(target=_encode_from, args=(plan, options, target, lanes, written),
                                name="hrx-video-encode", daemon=True)]
    model = FrameUpscaler(backend, spec, plan)
    for t in threads:
        t.start()
    per_call = model.frames_per_call
    try:
        _upscale_frames(model, segment, per_call, lanes, progress)
    except _Stop:
        pass
    except BaseException:
        lanes.stop.set()
        raise
    finally:
        for t in threads:
            while t.is_alive():
                t.join(0.1)
    if lanes.errors:
        raise lanes.errors[0]
    return written.frames, written.packets
