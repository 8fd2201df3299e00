"""What a caller hands the video pipeline: :class:`VideoOptions` (encoder, range, segments, resize) and the
parsing of its ``--frames`` / ``--video-opt`` text, the encoder family each input codec maps to, and the
progress protocol a run reports to."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

from hrx.errors import HRXError
from hrx.runtime.pipeline import BatchOptions

DEFAULT_SEGMENT_FRAMES = 240
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
    """``--frames "A:B"`` (``B`` excluded; either may be empty) -> ``(A, B or None)``."""
    try:
        a, b = text.split(":")
        return int(a or 0), (int(b) if b else None)
    except ValueError:
        raise HRXError(f"--frames {text!r}: expected A:B (frame numbers, B excluded), e.g. 0:100") from None


def parse_codec_options(items: Sequence[str] | None) -> tuple[tuple[str, str], ...]:
    """``--video-opt KEY=VALUE`` items -> ``((KEY, VALUE), ...)`` in their order."""
    out = []
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HRXError(f"--video-opt {item!r}: expected KEY=VALUE (e.g. tune=film)")
        out.append((key, value))
    return tuple(out)


class VideoProgress(Protocol):
    """What the video pipeline reports as it goes (any object with these methods will do); here they do nothing."""

    def start_video(self, source: Path, frames: int) -> None: ...

    def advance_frames(self, n: int) -> None: ...


class NoVideoProgress(VideoProgress):
    """Reports nothing."""
