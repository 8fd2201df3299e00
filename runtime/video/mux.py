"""Containers for ``hrx upscale`` on videos: which one an output uses, and the final join that writes it.

:func:`join` writes the upscaled video (the segment files' packets, in order) and copies every other
stream of the input without re-encoding: audio, subtitles, data and attachments, with their language,
title and disposition, the container's metadata and its chapters. Packets of all streams are
interleaved by time as they are read (memory does not grow with the length). A stream the output
container cannot hold is dropped with a one-line warning naming it (``strict``: the video fails).
The file is written under a temporary name beside the output and renamed when complete.
"""
from __future__ import annotations

import heapq
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from hrx.errors import HRXError, one_line
from hrx.paths import VIDEO_SUFFIXES, atomic_write

if TYPE_CHECKING:
    import av

    from hrx.runtime.video import VideoOptions, VideoPlan

# containers written (AVI is read only: it holds no presentation timestamps, so its videos become .mkv)
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mkv": "matroska", ".mov": "mov", ".webm": "webm", ".nut": "nut",
              ".ts": "mpegts", ".m2ts": "mpegts", ".mts": "mpegts"}
# Matroska / WebM would shift every stream so that none starts below zero (AAC's priming packets do):
# timestamps are kept as they are instead (negative block times are valid there)
MUXER_OPTIONS = {"matroska": {"avoid_negative_ts": "disabled"}, "webm": {"avoid_negative_ts": "disabled"}}
# metadata the muxer writes itself (a copied value would be stale)
_MUXER_TAGS = {"encoder", "duration", "number_of_frames", "number_of_bytes", "_statistics_tags",
               "_statistics_writing_app", "_statistics_writing_date_utc", "bps", "major_brand", "minor_version",
               "compatible_brands", "creation_time"}
assert set(CONTAINERS) <= set(VIDEO_SUFFIXES)
# the sample aspect ratio: mp4 / mov store it beside any codec (``pasp``); the other containers' own field
# (Matroska's display size, NUT's) cannot be set through PyAV, so there only codecs that store it keep it
SAR_CONTAINERS = {"mp4", "mov"}
SAR_CODECS = {"h264", "hevc"}


def container_format(path: Path) -> str:
    """The PyAV container format for ``path``'s suffix; one-line :class:`HRXError` for an unknown one."""
    fmt = CONTAINERS.get(path.suffix.lower())
    if fmt is None:
        raise HRXError(f"{path}: unknown video container {path.suffix or '(no suffix)'}; "
                       f"use one of {', '.join(sorted(CONTAINERS))}")
    return fmt


def supported_codecs(fmt: str) -> set[str]:
    """Codec names the container format ``fmt`` can hold (asked of PyAV)."""
    import tempfile

    import av

    with tempfile.TemporaryDirectory() as tmp, av.open(str(Path(tmp) / "probe"), "w", format=fmt) as c:
        return set(c.supported_codecs)


def kept_streams(source: Path, fmt: str, video_index: int, video_codec: str) -> tuple[list[int], list[str]]:
    """``(indices copied, descriptions of the streams dropped)`` when ``source`` is written as ``fmt``."""
    import av

    supported = supported_codecs(fmt)
    kept, dropped = [], []
    with av.open(str(source), metadata_errors="replace") as c:
        for s in c.streams:
            if s.index == video_index or internal(s):
                continue
            name = s.codec_context.codec.canonical_name if s.codec_context is not None else ""
            if s.type == "attachment" and fmt == "matroska" or name in supported:
                kept.append(s.index)
            else:
                dropped.append(describe(s))
    if av.codec.Codec(video_codec, "w").canonical_name not in supported:
        raise HRXError(f"the {fmt} container cannot hold {video_codec} video; choose another output suffix "
                       "or --video-codec")
    return kept, dropped


def internal(stream: av.stream.Stream) -> bool:
    """A stream the demuxer keeps for itself (mp4's chapter text track: the chapters are copied as chapters)."""
    return int(stream.discard) >= 48  # AVDISCARD_ALL


def describe(stream: av.stream.Stream) -> str:
    """``#2 subtitle ass (eng, "Signs")``: how a warning names a stream."""
    if stream.type == "attachment":
        return f"#{stream.index} attachment {stream.name} ({stream.mimetype})"
    ctx = stream.codec_context
    name = ctx.codec.canonical_name if ctx is not None else "unknown"
    meta = dict(stream.metadata)
    extra = ", ".join(x for x in (meta.get("language"), f'"{meta["title"]}"' if meta.get("title") else None) if x)
    return f"#{stream.index} {stream.type} {name}{f' ({extra})' if extra else ''}"


def default_output(source: Path, out_dir: Path, relative: Path | None = None) -> Path:
    """``out_dir/<stem><input's suffix>``, or ``.mkv`` where the input's container cannot hold every
    stream (or is not one this writes)."""
    rel = relative if relative is not None else Path(source.name)
    suffix = source.suffix.lower()
    if suffix in CONTAINERS:
        try:
            import av

            with av.open(str(source), metadata_errors="replace") as c:
                supported = supported_codecs(CONTAINERS[suffix])
                if all((s.codec_context.codec.canonical_name if s.codec_context is not None else "") in supported
                       or (s.type == "attachment" and CONTAINERS[suffix] == "matroska") or internal(s)
                       for s in c.streams):
                    return out_dir / rel
        except Exception:  # noqa: BLE001 - unreadable input: it fails with its own message when it runs
            return out_dir / rel
    return out_dir / rel.with_suffix(".mkv")


def _clean(metadata: dict) -> dict:
    return {k: v for k, v in metadata.items() if k.lower() not in _MUXER_TAGS}


def _copy_stream(out, s):
    if s.type == "attachment":  # (fonts of styled subtitles) written with the header, no packets
        return out.add_attachment(s.name or f"attachment{s.index}", s.mimetype or "application/octet-stream",
                                  bytes(s.data or b""))
    o = out.add_stream_from_template(s)
    o.time_base = s.time_base
    o.metadata.update(_clean(dict(s.metadata)))
    o.disposition = s.disposition
    return o


def _packets(container, streams, mapping, start: float | None, end: float | None) -> Iterator[tuple[float, int, object]]:
    """``(time, order, packet)`` of ``streams`` as demuxed, re-pointed at their output streams."""
    last = float("-inf")
    for packet in container.demux(*streams):
        if packet.size == 0:
            continue
        ts = packet.dts if packet.dts is not None else packet.pts
        t = float(ts * packet.time_base) if ts is not None else last
        shown = packet.pts if packet.pts is not None else ts
        if shown is not None:
            at = float(shown * packet.time_base)
            if (start is not None and at < start) or (end is not None and at >= end):
                continue
        last = t
        packet.stream = mapping[packet.stream.index]
        yield t, 1, packet


def read_stamps(segment: Path) -> list:
    """The ``(pts, dts, duration)`` of every packet of a finished segment, from its timestamps file; a missing
    or unreadable one is a one-line error (the work folder is damaged, not the output unwritable)."""
    import json

    stamps = segment.with_suffix(".json")
    try:
        packets = json.loads(stamps.read_text())["packets"]
        if not isinstance(packets, list):
            raise ValueError("no list of packets")
    except FileNotFoundError:
        raise HRXError(f"{stamps}: the timestamps file of a finished segment is missing; delete {segment.parent} "
                       "and run again") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HRXError(f"{stamps}: the timestamps file of a finished segment is unreadable ({one_line(e)}); "
                       f"delete {segment.parent} and run again") from None
    return packets


def _segment_packets(paths: list[Path], stream, time_base) -> Iterator[tuple[float, int, object]]:
    """The segments' packets in order, with their exact timestamps restored from the stamps files."""
    import av

    for path in paths:
        stamps = read_stamps(path)
        with av.open(str(path)) as c:  # read as muxed, one packet at a time (FFV1 4K segments are GBs)
            count = 0
            for packet in c.demux(c.streams.video[0]):
                if not packet.size:
                    continue
                if count >= len(stamps):
                    break
                pts, dts, duration = stamps[count]
                count += 1
                packet.time_base = time_base
                packet.pts, packet.dts, packet.duration = pts, dts, duration
                packet.stream = stream
                ts = dts if dts is not None else pts
                yield float(ts * time_base), 0, packet
            if count != len(stamps) or any(p.size for p in c.demux(c.streams.video[0])):
                raise HRXError(f"{path}: its packets do not match its timestamps file; delete the work folder "
                               "and run again")


def join(plan: VideoPlan, segments: list[Path], output: Path, options: VideoOptions) -> list[str]:
    """Write ``output``: the segments' video and the input's other streams; returns the dropped ones."""
    import av

    fmt = container_format(output)
    source = Path(plan.source)
    kept, dropped = kept_streams(source, fmt, plan.stream, plan.codec)
    if dropped:
        line = f"{source}: {output.suffix} cannot hold {'; '.join(dropped)}"
        if options.strict:
            raise HRXError(f"{line} (choose .mkv, or leave out --strict to drop them)")
        if options.warn is not None:
            options.warn(f"{line}: dropped (.mkv keeps them)")

    if plan.sar not in (None, 1) and fmt not in SAR_CONTAINERS and options.warn is not None \
            and av.codec.Codec(plan.codec, "w").canonical_name not in SAR_CODECS:
        options.warn(f"{source}: {output.suffix} with {plan.codec} cannot hold the sample aspect ratio "
                     f"{plan.sar.numerator}:{plan.sar.denominator}: its pixels show square (.mp4, .mov, libx264 "
                     "or libx265 keep it)")

    def write(tmp: str) -> None:
        with av.open(str(source), metadata_errors="replace") as inp, \
                av.open(tmp, "w", format=fmt, options=MUXER_OPTIONS.get(fmt, {})) as out, \
                av.open(str(segments[0])) as first:
            out.metadata.update(_clean(dict(inp.metadata)))
            video_in = inp.streams[plan.stream]
            video = out.add_stream_from_template(first.streams.video[0], opaque=True)  # no encoder: remux (AV1)
            video.time_base = plan.time_base
            if plan.sar is not None:  # the container's (mp4 / mov), whatever the codec stores
                video.codec_context.sample_aspect_ratio = plan.sar
            video.metadata.update(_clean(dict(video_in.metadata)))
            video.disposition = video_in.disposition
            mapping = {}
            for index in kept:
                mapping[index] = _copy_stream(out, inp.streams[index])
            chapters = inp.chapters()
            if chapters:
                out.set_chapters(chapters)
            copied = [inp.streams[i] for i in kept if inp.streams[i].type != "attachment"]
            streams = [_segment_packets(segments, video, plan.time_base)]
            if copied:
                streams.append(_packets(inp, copied, mapping, plan.range_start, plan.range_end))
            for _, _, packet in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
                out.mux(packet)

    try:
        atomic_write(output, write)
    except av.FFmpegError as e:
        raise HRXError(f"{output}: cannot write ({e.strerror or e})") from None
    except OSError as e:
        raise HRXError(f"{output}: cannot write ({e.strerror or e})") from None
    return dropped
