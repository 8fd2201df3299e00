"""One video from plan to output: its work folder (fingerprint, lock, finished segments, frames lost),
each segment written atomically into it, and the join; :func:`upscale_video` runs them all."""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hrx.errors import HRXError, one_line
from hrx.interface import Backend
from hrx.paths import OutputLock, atomic_write, atomic_write_bytes, hold_lock
from hrx.runtime.tiling import TileSpec
from hrx.runtime.video.codec import encode_segment
from hrx.runtime.video.options import NoVideoProgress, VideoOptions, VideoProgress
from hrx.runtime.video.planning import Segment, VideoPlan, probe

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