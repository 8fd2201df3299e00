"""The video side of ``hrx upscale``: which inputs are videos, where their outputs go, and the run.

Videos (``hrx.paths.VIDEO_SUFFIXES``) given as files or found in the input folders are upscaled one after
the other with the same backend(s) as the images (:mod:`hrx.runtime.video`); the images of the same
command run afterwards. ``-o out.mkv`` names the output of a single video; otherwise videos go into
the output folder with their stem and container (``.mkv`` where the input's cannot hold every stream).
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import typer

from hrx.cli.common import ProgressBars, is_interactive
from hrx.errors import HRXError
from hrx.paths import VIDEO_SUFFIXES, is_image_file, is_video_file


@dataclass(frozen=True)
class VideoJob:
    source: Path
    output: Path
    error: str | None = None


def is_video_output(output: Path) -> bool:
    """``-o`` names a video file (``out.mkv``) rather than a folder."""
    return output.suffix.lower() in VIDEO_SUFFIXES and not output.is_dir()


def split_inputs(inputs: Sequence[Path], output: Path, recursive: bool) -> tuple[list[VideoJob], list[Path]]:
    """``(video jobs, inputs left for the image pipeline)``: video files as given and those in the folders;
    a folder stays an image input when it holds images."""
    from hrx.runtime.video.mux import default_output

    single = is_video_output(output)
    out_dir = output.parent if single else output
    exclude = out_dir.resolve()
    videos: list[VideoJob] = []
    images: list[Path] = []
    for given in map(Path, inputs):
        if given.is_dir():
            found, has_images = _scan(given, recursive, exclude)
            videos.extend(VideoJob(v, default_output(v, out_dir, v.relative_to(given))) for v in found)
            if has_images or not found:
                images.append(given)
        elif is_video_file(given) or (single and not given.exists()):
            videos.append(VideoJob(given, output if single else default_output(given, out_dir),
                                   None if given.is_file() else "no such file"))
        else:
            images.append(given)
    if single:
        if len(videos) != 1 or images:
            raise HRXError(f"-o {output} names one video file: pass exactly one video (or -o a folder)")
    unique: dict[Path, VideoJob] = {}
    for job in videos:
        unique.setdefault(job.source.resolve(), job)
    videos = list(unique.values())
    seen: dict[Path, Path] = {}
    for job in videos:
        target = job.output.resolve()
        if target == job.source.resolve():
            raise HRXError(f"{job.output}: refusing to write over an input file; choose another -o")
        if target in seen:
            raise HRXError(f"{seen[target]} and {job.source} would both be written to {job.output}")
        seen[target] = job.source
    return videos, images


def _scan(folder: Path, recursive: bool, exclude: Path) -> tuple[list[Path], bool]:
    videos, has_images = [], False
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if recursive and not d.startswith(".") and (here / d).resolve() != exclude)
        for name in sorted(files):
            path = here / name
            if is_video_file(path):
                videos.append(path)
            elif is_image_file(path):
                has_images = True
    return videos, has_images


class FrameProgress(ProgressBars):
    """Frames, fps and ETA of the video being upscaled (rich, on stderr), when interactive."""

    def __init__(self, enabled: bool) -> None:
        super().__init__(enabled)
        self.task = None
        self.started = 0.0
        self.done = 0

    def columns(self) -> list:
        from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[fps]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]

    def start_video(self, source: Path, frames: int) -> None:
        if self.enabled:
            if self.task is not None:
                self.bars.remove_task(self.task)
            self.task = self.bars.add_task(f"frames of {source.name}", total=frames, fps="")
            self.started, self.done = time.perf_counter(), 0

    def advance_frames(self, n: int) -> None:
        if self.enabled:
            self.done += n
            fps = self.done / max(time.perf_counter() - self.started, 1e-9)
            self.bars.update(self.task, advance=n, fps=f"{fps:.2f} fps")


def run_videos(upscale_one: Callable, videos: Sequence[VideoJob], quiet: bool, skip_existing: bool = False,
               on_result: Optional[Callable] = None, on_error: Optional[Callable] = None) -> list:
    """``upscale_one(job, progress)`` for every video; any exception inside one video (decoding, the model,
    encoding, the join, its resume state) fails that video with a one-line reason and the batch goes on;
    only ``KeyboardInterrupt`` / ``SystemExit`` end it. Returns the :class:`hrx.runtime.video.VideoResult` of
    each, also given to ``on_result`` (the ``--report`` row) as each video finishes; ``on_error(e)`` (``--debug``:
    the traceback) for each failure."""
    from hrx.runtime.pipeline import failure_line
    from hrx.runtime.video import VideoResult

    results = []
    with FrameProgress(enabled=not quiet and is_interactive()) as progress:
        for job in videos:
            result = VideoResult(str(job.source), str(job.output))
            if skip_existing and job.output.exists():
                result.status, result.reason = "skipped", "output exists"
            elif job.error is not None:
                result.reason = f"{job.source}: {job.error}"
            else:
                try:
                    result = upscale_one(job, progress)
                except KeyboardInterrupt:
                    _say_resumable(job, progress)
                    raise
                except OSError as e:  # the output side: a folder that cannot be made, a full disk
                    result.reason = f"{e.filename or job.output}: {e.strerror or e}"
                    _show(e, on_error)
                except Exception as e:  # noqa: BLE001 - decode, inference, encode, join: this video's fate only
                    result.reason = str(e) if _names_output(e, job) else failure_line(job.source, e)
                    _show(e, on_error)
            if result.status == "failed":
                progress.print(f"error: {result.reason}")
            elif result.status == "done" and not quiet:
                fps = result.frames / max(result.seconds, 1e-9)
                resumed = f", {result.resumed_segments} of {result.segments} segments resumed" \
                    if result.resumed_segments else ""
                lost = f", {result.lost_frames} frames lost" if result.lost_frames else ""
                turned = f", {result.orientation} upright, as players show it" if result.orientation else ""
                progress.print(f"{job.source}: {result.frames} frames in {result.seconds:.1f} s ({fps:.2f} fps){lost}"
                               f"{resumed}{turned} -> {job.output} ({result.codec} {result.pix_fmt} "
                               f"{result.out_width}x{result.out_height})")
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def _names_output(e: Exception, job: VideoJob) -> bool:
    """An :class:`HRXError` about the output or its work folder (resume state) names that file already."""
    from hrx.runtime.video import work_folder

    return isinstance(e, HRXError) and (str(job.output) in str(e) or str(work_folder(job.output)) in str(e))


def _show(e: BaseException, on_error: Optional[Callable]) -> None:
    if on_error is not None:
        on_error(e)


def _say_resumable(job: VideoJob, progress: FrameProgress) -> None:
    """After Ctrl-C: how many finished segments wait in the work folder for the same command."""
    from hrx.runtime.video import work_folder

    done = len(list(work_folder(job.output).glob("seg-*.mkv")))
    if done:
        progress.print(f"{job.source}: interrupted; {done} finished segment{'s' * (done != 1)} kept in "
                       f"{work_folder(job.output)}: the same command continues from them")


def parse_frames(text: str) -> tuple[int, int | None]:
    """``"A:B"`` (``B`` excluded; either may be empty) -> ``(A, B or None)``."""
    try:
        a, b = text.split(":")
        return int(a or 0), (int(b) if b else None)
    except ValueError:
        raise HRXError(f"--frames {text!r}: expected A:B (frame numbers, B excluded), e.g. 0:100") from None


def parse_codec_options(items: list[str] | None) -> tuple[tuple[str, str], ...]:
    """``--video-opt KEY=VALUE`` items -> ``((KEY, VALUE), ...)`` in their order."""
    out = []
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HRXError(f"--video-opt {item!r}: expected KEY=VALUE (e.g. tune=film)")
        out.append((key, value))
    return tuple(out)


def video_options(codec: Optional[str], crf: Optional[int], preset: Optional[str], pix_fmt: Optional[str],
                  video_opt: Optional[list[str]], frames: Optional[str], start: Optional[float], end: Optional[float],
                  segment_frames: int, strict: bool, resize, warn: Callable[[str], None]):
    from hrx.runtime.video import VideoOptions

    return VideoOptions(codec, crf, preset, pix_fmt, parse_codec_options(video_opt),
                        parse_frames(frames) if frames else None, start, end, segment_frames, strict,
                        dataclasses.replace(resize, warn=None), warn)


def model_id(engine: Optional[Path], model: Optional[str]) -> str:
    """What names the weights for resuming: the file with its size and time (a re-export restarts)."""
    path = engine or (Path(model) if model and Path(model).is_file() else None)
    if path is None:
        return str(model or "bundled")
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def run_videos_here(request, pool, videos: Sequence[VideoJob], overlap: Optional[int], merge: str, options,
                    quiet: bool, skip_existing: bool, ray_options=None, on_result: Optional[Callable] = None,
                    on_error: Optional[Callable] = None) -> list:
    """Open the backend(s) of ``pool`` (several CPU sessions share each frame's tiles) and run the videos;
    with ``ray_options``, this process only plans and joins, Ray Data actors upscale the segments."""
    from hrx.extras import require

    require("video", f"upscaling videos ({videos[0].source})")  # before the model is opened
    if ray_options is not None:
        return _run_videos_on_ray(request, videos, overlap, merge, options, quiet, skip_existing, ray_options,
                                  on_result)
    from hrx.runtime.pool import SharedSessions, open_workers
    from hrx.runtime.tiling import TileSpec
    from hrx.runtime.video import upscale_video

    runners = open_workers(request, pool[:1] if pool[0].kind == "cuda" else pool)
    backend = SharedSessions(runners) if len(runners) > 1 else runners[0]
    ident = model_id(request.engine, request.model)
    try:
        i = backend.info
        spec = TileSpec.from_info(i, overlap, merge)
        if not quiet:
            typer.echo(f"backend: {backend.name} for {len(videos)} video{'s' * (len(videos) != 1)} ({i.arch} "
                       f"x{i.scale}, tile {spec.tile}, batch {spec.batch}, overlap {spec.tile - spec.stride}, "
                       f"{spec.merge}{f', {len(runners)} sessions' if len(runners) > 1 else ''})", err=True)

        def one(job: VideoJob, progress):
            return upscale_video(backend, spec, job.source, job.output, options, progress, ident)

        return run_videos(one, videos, quiet, skip_existing, on_result, on_error)
    finally:
        backend.close()  # SharedSessions closes every session


def _run_videos_on_ray(request, videos: Sequence[VideoJob], overlap: Optional[int], merge: str, options, quiet: bool,
                       skip_existing: bool, ray_options, on_result: Optional[Callable]) -> list:
    """``--ray``: this process reads the model's metadata only (no backend, compile or engine build here),
    plans and joins each video; Ray Data actors open the model and upscale the segments."""
    from hrx.runtime.distributed import exported_model_info
    from hrx.runtime.tiling import TileSpec
    from hrx.runtime.video.ray import upscale_video_ray

    request = dataclasses.replace(request, engine=Path(request.engine).resolve())  # the same file on every node
    engine = request.engine
    if not engine.is_file():
        raise HRXError(f"{engine}: no such engine file")
    i = exported_model_info(engine)
    spec = TileSpec.from_info(i, overlap, merge)
    ident = model_id(engine, None)
    if not quiet:
        typer.echo(f"backend: ray for {len(videos)} video{'s' * (len(videos) != 1)} ({i.arch} x{i.scale}, tile "
                   f"{spec.tile}, batch {spec.batch}, overlap {spec.tile - spec.stride}, {spec.merge})", err=True)

    def one(job: VideoJob, progress):
        return upscale_video_ray(request, i, spec, job.source.resolve(), job.output.resolve(), options, ray_options,
                                 ident)

    return run_videos(one, videos, quiet, skip_existing, on_result)


def finish_videos(results: list, json_path: Optional[Path], raise_failed: bool = True) -> None:
    """``--json`` for a run of videos only, and the exit: ``error: N of M videos failed``."""
    from hrx.cli.common import fail

    if json_path is not None:
        import json
        import sys

        from hrx.paths import atomic_write_bytes

        text = json.dumps({"done": sum(r.status == "done" for r in results),
                           "failed": sum(r.status == "failed" for r in results),
                           "skipped": sum(r.status == "skipped" for r in results),
                           "videos": [r.to_dict() for r in results]}, indent=2) + "\n"
        if str(json_path) == "-":
            sys.stdout.write(text)
        else:
            atomic_write_bytes(json_path, text.encode())
    failed = sum(r.status == "failed" for r in results)
    if failed and raise_failed:
        raise fail(f"{failed} of {len(results)} videos failed")
