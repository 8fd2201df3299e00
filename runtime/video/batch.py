"""The videos of an ``hrx upscale`` run: which inputs are videos and where their outputs go, whether one
needs more than 8 bits, and the run of them one after the other.

Videos (``hrx.paths.VIDEO_SUFFIXES``) given as files or found in the input folders are upscaled one after
the other with the same backend(s) as the images (:func:`hrx.runtime.upscale_run.run_upscale`); the images
of the same command run afterwards. ``-o out.mkv`` names the output of a single video; otherwise videos go
into the output folder with their stem and container (``.mkv`` where the input's cannot hold every stream).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from hrx.errors import HRXError
from hrx.paths import VIDEO_SUFFIXES, is_image_file, is_video_file

if TYPE_CHECKING:
    from hrx.runtime.factory import BackendRequest
    from hrx.runtime.pipeline import BatchOptions
    from hrx.runtime.pool import Worker
    from hrx.runtime.upscale_run import UpscaleRequest, UpscaleView
    from hrx.runtime.video.options import VideoOptions


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


def deep_videos(videos: Sequence[VideoJob], pix_fmt: Optional[str]) -> bool:
    """Whether a video will be written with more than 8 bits per sample: ``--pix-fmt`` says so, or (without
    it) an input stream has them (the output keeps the input's depth). Unreadable videos are reported later."""
    if not videos:
        return False
    from hrx.runtime.video.color import bits_of

    if pix_fmt:
        try:
            return bits_of(pix_fmt) > 8
        except ValueError:  # not a pixel format: the video path reports it in one line
            return False
    from hrx.runtime.video import open_input, video_stream

    for job in videos:
        try:
            with open_input(job.source) as container:  # the stream upscaled, not a cover picture before it
                fmt = video_stream(container, job.source).codec_context.format
                if fmt is not None and bits_of(fmt.name) > 8:
                    return True
        except (HRXError, IndexError, ValueError, OSError):
            continue
    return False


def model_id(engine: Optional[Path], model: Optional[str]) -> str:
    """What names the weights for resuming: the file with its size and time (a re-export restarts)."""
    path = engine or (Path(model) if model and Path(model).is_file() else None)
    if path is None:
        return str(model or "bundled")
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def run_videos(upscale_one: Callable, videos: Sequence[VideoJob], quiet: bool, skip_existing: bool = False,
               on_result: Optional[Callable] = None, on_error: Optional[Callable] = None,
               display: Any = None) -> list:
    """``upscale_one(job, progress)`` for every video; any exception inside one video (decoding, the model,
    encoding, the join, its resume state) fails that video with a one-line reason and the batch goes on;
    only ``KeyboardInterrupt`` / ``SystemExit`` end it. Returns the :class:`hrx.runtime.video.VideoResult` of
    each, also given to ``on_result`` (the ``--report`` row) as each video finishes; ``on_error(e)`` (``--debug``:
    the traceback) for each failure. ``display``: the frames bar and the lines above it (a context manager
    with ``start_video``, ``advance_frames`` and ``print``; default: lines on stderr, no bar)."""
    from hrx.runtime.pipeline import failure_line
    from hrx.runtime.video import VideoResult

    results = []
    if display is None:
        from hrx.runtime.upscale_run import Lines

        display = Lines()
    with display as progress:
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
            _say_result(result, job, progress, quiet)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results


def _say_result(result, job: VideoJob, progress, quiet: bool) -> None:
    """A failed video's one-line reason; a finished one's frames, speed and output (not ``quiet``)."""
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


def _names_output(e: Exception, job: VideoJob) -> bool:
    """An :class:`HRXError` about the output or its work folder (resume state) names that file already."""
    from hrx.runtime.video import work_folder

    return isinstance(e, HRXError) and (str(job.output) in str(e) or str(work_folder(job.output)) in str(e))


def _show(e: BaseException, on_error: Optional[Callable]) -> None:
    if on_error is not None:
        on_error(e)


def _say_resumable(job: VideoJob, progress) -> None:
    """After Ctrl-C: how many finished segments wait in the work folder for the same command."""
    from hrx.runtime.video import work_folder

    done = len(list(work_folder(job.output).glob("seg-*.mkv")))
    if done:
        progress.print(f"{job.source}: interrupted; {done} finished segment{'s' * (done != 1)} kept in "
                       f"{work_folder(job.output)}: the same command continues from them")


def video_summary(results: Sequence) -> dict:
    """``--json`` of a run of videos only: the counts and every video's row."""
    return {"done": sum(r.status == "done" for r in results),
            "failed": sum(r.status == "failed" for r in results),
            "skipped": sum(r.status == "skipped" for r in results),
            "videos": [r.to_dict() for r in results]}


def video_options(request: UpscaleRequest, resize: BatchOptions) -> VideoOptions:
    """The videos' options of an ``hrx upscale`` request; ``--frames`` and ``--video-opt`` parsed here, so only
    a run with videos reads them."""
    from hrx.runtime.video import VideoOptions
    from hrx.runtime.video.options import parse_codec_options, parse_frames

    return VideoOptions(request.video_codec, request.crf, request.preset, request.pix_fmt,
                        parse_codec_options(request.video_opt), parse_frames(request.frames) if request.frames else None,
                        request.start, request.end, request.segment_frames, request.strict,
                        dataclasses.replace(resize, warn=None), resize.warn)


def upscale_videos(request: UpscaleRequest, backend: BackendRequest, pool: Sequence[Worker],
                   videos: Sequence[VideoJob], options: VideoOptions, view: UpscaleView,
                   on_result: Callable) -> list:
    """The ``videos`` of ``request``, one after the other, on the backends of ``pool`` for the resolved ``backend``
    (:func:`hrx.runtime.upscale_run.open_backends`: several CPU sessions share each frame's tiles); with
    ``--ray``, this process only plans and joins, Ray Data actors upscale the segments."""
    if request.on_ray:
        return _on_ray(request, backend, videos, options, view, on_result)
    from hrx.runtime.pool import SharedSessions
    from hrx.runtime.tiling import TileSpec
    from hrx.runtime.upscale_run import open_backends
    from hrx.runtime.video import upscale_video

    runners = open_backends(backend, pool, videos=True)
    shared = SharedSessions(runners) if len(runners) > 1 else runners[0]
    ident = model_id(backend.engine, backend.model)
    try:
        i = shared.info
        spec = TileSpec.from_info(i, request.overlap, request.merge)
        if not view.quiet:
            view.echo(f"backend: {shared.name} for {len(videos)} video{'s' * (len(videos) != 1)} ({i.arch} "
                      f"x{i.scale}, tile {spec.tile}, batch {spec.batch}, overlap {spec.tile - spec.stride}, "
                      f"{spec.merge}{f', {len(runners)} sessions' if len(runners) > 1 else ''})")

        def one(job: VideoJob, progress: Any) -> Any:
            return upscale_video(shared, spec, job.source, job.output, options, progress, ident)

        return run_videos(one, videos, view.quiet, request.skip_existing, on_result, view.on_error,
                          view.video_display())
    finally:
        shared.close()  # SharedSessions closes every session


def _on_ray(request: UpscaleRequest, backend: BackendRequest, videos: Sequence[VideoJob], options: VideoOptions,
            view: UpscaleView, on_result: Callable) -> list:
    """``--ray``: this process reads the model's metadata only (no backend, compile or engine build here),
    plans and joins each video; Ray Data actors open the model and upscale the segments."""
    from hrx.runtime.distributed import RayOptions
    from hrx.runtime.tiling import TileSpec
    from hrx.runtime.upscale_run import ray_model
    from hrx.runtime.video.ray import upscale_video_ray

    backend, i = ray_model(backend)  # the same file on every node
    spec = TileSpec.from_info(i, request.overlap, request.merge)
    ident = model_id(backend.engine, None)
    if not view.quiet:
        view.echo(f"backend: ray for {len(videos)} video{'s' * (len(videos) != 1)} ({i.arch} x{i.scale}, tile "
                  f"{spec.tile}, batch {spec.batch}, overlap {spec.tile - spec.stride}, {spec.merge})")
    ray_options = RayOptions(address=request.ray_address, actors=request.ray_actors)

    def one(job: VideoJob, progress: Any) -> Any:
        return upscale_video_ray(backend, i, spec, job.source.resolve(), job.output.resolve(), options, ray_options,
                                 ident)

    return run_videos(one, videos, view.quiet, request.skip_existing, on_result, display=view.video_display())
