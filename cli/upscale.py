"""``hrx upscale``: upscale files and folders of images with an ONNX / TensorRT engine or a checkpoint."""
from __future__ import annotations

import dataclasses
import json
import sys
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from hrx.cli.common import (ProgressBars, choices, debug_enabled, fail, handle_errors, is_interactive,
                            print_traceback)
from hrx.errors import HRXError
from hrx.runtime.factory import BACKENDS  # the choices come from the runtime's tuples (light modules: numpy)
from hrx.runtime.images import DEFAULT_PNG_LEVEL, FORMATS
from hrx.runtime.pipeline import ALPHA_MODES
from hrx.runtime.precision_policy import DEFAULT_MIN_PSNR, PRECISION_CHOICES
from hrx.runtime.report import ReportWriter
from hrx.runtime.tiling import MERGE_MODES

BackendChoice = choices("BackendChoice", BACKENDS)
FormatChoice = choices("FormatChoice", FORMATS)
MergeChoice = choices("MergeChoice", MERGE_MODES)
AlphaChoice = choices("AlphaChoice", ALPHA_MODES)
PrecisionOption = choices("PrecisionOption", PRECISION_CHOICES)


@handle_errors
def upscale(
    inputs: Annotated[list[Path], typer.Argument(help="Image files, video files and/or folders (PNG, JPEG, WebP, BMP, TIFF; MP4, MKV, MOV, WebM, ...: docs/video.md).",
                                                 show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder; relative paths and stems are kept. For one video, a file name (out.mkv) instead.",
                                         show_default=False)],
    engine: Annotated[Optional[Path], typer.Option("--engine", "-e", help="Exported model: .onnx, or a TensorRT .engine / .plan, or a bundled model's name (default-x1: restoration "
                                                      "without resizing, default-x2, default-x4). With neither --engine nor --model: the bundled default-x4 (shipped as ONNX).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Checkpoint (.pt / .safetensors) or bundled model name, run with PyTorch.")] = None,
    backend: Annotated[BackendChoice, typer.Option("--backend", "-b", help="Inference backend; auto picks the fastest available for the model and prints it: ONNX Runtime CUDA with a GPU, else OpenVINO on the CPU (ONNX Runtime CPU when OpenVINO is missing or cannot compile the graph). trt with an .onnx builds a cached TensorRT engine on first use.")] = BackendChoice.auto,
    precision: Annotated[PrecisionOption, typer.Option("--precision", "-p", help="CPU compute precision (OpenVINO; PyTorch: fp32 / bf16). auto: bf16 where the CPU has AMX-BF16 or AVX512-BF16 and the model passes the fidelity gate (BF16 vs FP32 PSNR >= --min-psnr on fixed photo tiles, measured once and cached), fp32 otherwise and for outputs deeper than 8 bits (16-bit images, 10-bit video); int8 for an INT8 Q/DQ file (hrx calibrate). The first line says what was chosen and why. --backend trt with an .onnx: the engine's build precision (fp32, fp16, bf16, int8; auto: the file's own, FP16 for an FP32 export).")] = PrecisionOption.auto,
    min_psnr: Annotated[float, typer.Option("--min-psnr", help="The fidelity gate's threshold for --precision auto: BF16 against FP32, dB.")] = DEFAULT_MIN_PSNR,
    gate_images: Annotated[Optional[Path], typer.Option("--gate-images", help="Folder of photos for the fidelity gate (its first 4, centre crops) [default: photo crops bundled with hrx].", show_default=False)] = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Also upscale images in sub-folders.")] = False,
    fmt: Annotated[FormatChoice, typer.Option("--format", "-f", help="Output format.")] = FormatChoice.png,
    quality: Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG / WebP quality.")] = 95,
    png_level: Annotated[int, typer.Option("--png-level", min=0, max=9, help="PNG compression (zlib level 0-9; also 16-bit TIFF's deflate). Lossless at every level: higher levels write smaller files more slowly, the pixels are the same. The default 1 (OpenCV's) writes several times faster than Pillow's 6, files about a third larger; 9: the smallest files.")] = DEFAULT_PNG_LEVEL,
    tile: Annotated[Optional[int], typer.Option("--tile", min=1, help="Tile side for --model (rounded up to the model's size multiple) (default 256); engines have a static tile.")] = None,
    batch: Annotated[Optional[int], typer.Option("--batch", min=1, help="Tiles per inference call for --model (default 1); engines have a static batch.")] = None,
    overlap: Annotated[Optional[int], typer.Option("--overlap", min=0, help="Overlap between tiles in input pixels (default: the model's tile_overlap).")] = None,
    merge: Annotated[MergeChoice, typer.Option("--merge", help="Join overlapping tiles with a smooth cross-fade (blend) or keep each tile's centre (crop).")] = MergeChoice.blend,
    alpha: Annotated[AlphaChoice, typer.Option("--alpha", help="Alpha channel with a model that has none: bicubic, or through the model as gray (twice the work).")] = AlphaChoice.bicubic,
    outscale: Annotated[Optional[float], typer.Option("--outscale", "-s", help="Final scale (e.g. 1.5, 3): the model's scale, then Lanczos up or area down to it; at 1 or below the model is skipped.")] = None,
    width: Annotated[Optional[int], typer.Option("--width", min=1, help="Final width in pixels, height in proportion (with --height: fit inside both).")] = None,
    height: Annotated[Optional[int], typer.Option("--height", min=1, help="Final height in pixels, width in proportion.")] = None,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Skip images whose output already exists (resume a batch).")] = False,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, help="Refuse inputs with more pixels than this (decompression bombs, memory).")] = 50_000_000,
    device: Annotated[Optional[int], typer.Option("--device", min=0, help="CUDA device number (ONNX Runtime CUDA, TensorRT, PyTorch).")] = None,
    devices: Annotated[Optional[str], typer.Option("--devices", help="Several CUDA devices, e.g. 0,1: one worker per device, all taking images from one queue.")] = None,
    workers: Annotated[int, typer.Option("--workers", min=0, help="CPU sessions sharing the work: every image's tiles go to whichever session is free; --threads is split between them. 0 (default): one per core for OpenVINO (a stream each, of one compiled model) and ONNX Runtime CPU (a single-thread session each; measured faster than one session with every core, on a folder and on one large image; a single image of fewer tile batches gets that many sessions, so one small image runs on every core), 1 for other backends.")] = 0,
    threads: Annotated[int, typer.Option("--threads", min=0, help="CPU intra-op threads in all (0: every core this process may use).")] = 0,
    url: Annotated[Optional[str], typer.Option("--url", help="Triton server for --backend triton: http://HOST:PORT (or HOST:PORT) or grpc://HOST:PORT.", show_default=False)] = None,
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="Model name on the Triton server (its config carries HRX's metadata: see hrx triton-repo).", show_default=False)] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Triton: seconds allowed for connecting and for each request.")] = 60.0,
    ray: Annotated[bool, typer.Option("--ray", help="Run on a Ray cluster with Ray Data actors (pip install 'hrx[ray]'): a local one started for the run, or --ray-address. Needs --engine (or the bundled model) and the images on paths every node can read.")] = False,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster to join with --ray (e.g. auto, ray://head:10001) [default: start a local one].", show_default=False)] = None,
    ray_actors: Annotated[int, typer.Option("--ray-actors", min=0, help="Ray actors (0: one per GPU, else N-1 of the cluster's N CPUs).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, backend line or summary; errors only.")] = False,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write a machine-readable report here at the end ('-': stdout).")] = None,
    report_path: Annotated[Optional[Path], typer.Option("--report", help="JSON-lines report written as the batch runs: one line per finished image or video, flushed to disk, then a summary line; valid after a crash. With --skip-existing it is appended to (resume).", show_default=False)] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write a page that opens from disk: every image with a before/after slider (bicubic vs output), sizes, seconds, backend and precision, failed files with their reasons, a first-frame pair per video (docs/reports.md).", show_default=False)] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Print the full traceback of every error (also HRX_DEBUG=1).")] = False,
    video_codec: Annotated[Optional[str], typer.Option("--video-codec", help="Video encoder: libx264, libx265, libsvtav1, ffv1, prores_ks, libvpx-vp9 ... (default: the input's codec family, else libx264).", show_default=False, rich_help_panel="Videos")] = None,
    crf: Annotated[Optional[int], typer.Option("--crf", min=0, help="Encoder quality (x264 / x265 / SVT-AV1 CRF; lower is better).", show_default=False, rich_help_panel="Videos")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", help="Encoder preset (e.g. slow, medium; SVT-AV1: 0-13).", show_default=False, rich_help_panel="Videos")] = None,
    pix_fmt: Annotated[Optional[str], typer.Option("--pix-fmt", help="Output pixel format, e.g. yuv420p, yuv420p10le (default: the input's).", show_default=False, rich_help_panel="Videos")] = None,
    video_opt: Annotated[Optional[list[str]], typer.Option("--video-opt", help="KEY=VALUE passed to the encoder (repeatable), e.g. tune=film.", show_default=False, rich_help_panel="Videos")] = None,
    frames: Annotated[Optional[str], typer.Option("--frames", help="Frames A:B only (presentation order, B excluded).", show_default=False, rich_help_panel="Videos")] = None,
    start: Annotated[Optional[float], typer.Option("--start", min=0, help="Start at this many seconds into the video.", show_default=False, rich_help_panel="Videos")] = None,
    end: Annotated[Optional[float], typer.Option("--end", min=0, help="End before this many seconds into the video.", show_default=False, rich_help_panel="Videos")] = None,
    segment_frames: Annotated[int, typer.Option("--segment-frames", min=1, help="Frames per closed segment (cut at key frames): the unit a rerun resumes from.", rich_help_panel="Videos")] = 240,
    strict: Annotated[bool, typer.Option("--strict", help="Fail a video that loses frames to corrupt data or has a stream the output container cannot hold.", rich_help_panel="Videos")] = False,
) -> None:
    """Upscale images and videos with tiled inference: OpenVINO (CPU), ONNX Runtime (CPU / CUDA), TensorRT,
    PyTorch, or a Triton server.

    Example: hrx upscale photos/ -r -o out/ --engine model.onnx; hrx upscale clip.mkv -o out/ (docs/video.md)
    """
    from hrx.cli.upscale_video import split_inputs
    from hrx.paths import new_run_id
    from hrx.runtime.factory import BackendRequest
    from hrx.runtime.images import configure_pillow
    from hrx.runtime.pipeline import BatchOptions, check_inputs, plan_jobs
    from hrx.runtime.pool import parse_devices, plan_workers, runs_cpu_sessions

    if device is not None and devices is not None:
        raise fail("pass either --device or --devices, not both")
    if html is not None:  # before any work
        from hrx.pages import check_page_path

        check_page_path(html)

    if (ray or ray_address) and (model is not None or backend.value in ("torch", "triton") or url or model_name):
        raise fail("--ray runs exported models: pass --engine model.onnx (or .engine), not --model / --backend "
                   f"{backend.value}", 2)
    warned: set[str] = set()
    warn_lock = threading.Lock()

    def warn(line: str) -> None:  # once per run, from any worker
        with warn_lock:
            if line in warned:
                return
            warned.add(line)
        typer.echo(f"warning: {line}", err=True)

    if engine is not None and not engine.exists():
        engine = _bundled_by_name(engine)
    run_id = new_run_id()
    options = BatchOptions(fmt.value, quality, skip_existing, max_pixels, alpha.value, outscale, width, height, warn,
                           run_id, print_traceback if debug_enabled(debug) else None, png_level)
    device_list = parse_devices(devices) if devices is not None else ([device] if device is not None else None)
    videos, inputs = split_inputs(inputs, output, recursive)  # videos: hrx.cli.upscale_video
    jobs = plan_jobs(inputs, output, fmt.value, recursive) if inputs else []
    if workers == 0:
        cpu = device_list is None and url is None and model_name is None and not (ray or ray_address)
        workers = _auto_workers(cpu and runs_cpu_sessions(engine, model, backend.value), threads, jobs,
                                engine if engine is not None or model is not None else _bundled_onnx(), overlap)
    pool = plan_workers(device_list, workers, threads)
    if jobs:
        check_inputs(jobs, output)  # before any model work (a first run exports the bundled model: slow)
    configure_pillow(max_pixels)
    if videos:  # before any model work (the precision gate runs models)
        from hrx.extras import require

        require("video", f"upscaling videos ({videos[0].source})")
    log = None if quiet else _once(lambda line: typer.echo(line, err=True))
    deep = precision.value == "auto" and backend.value in ("auto", "openvino") and (
        _sixteen_bit_images(jobs, fmt.value) or _deep_videos(videos, pix_fmt))
    request = BackendRequest(engine, model, backend.value, tile, batch, 0, log=log, url=url, model_name=model_name,
                             timeout=timeout, precision=precision.value, min_psnr=min_psnr, gate_images=gate_images,
                             deep_output=deep)
    bundled = engine is None and model is None and url is None and model_name is None  # named so in the lines below
    request = _named(lambda: _resolve(request, quiet), engine or model)
    if videos:
        from hrx.cli.upscale_video import finish_videos, run_videos_here, video_options

        vopts = video_options(video_codec, crf, preset, pix_fmt, video_opt, frames, start, end, segment_frames, strict,
                              options, warn)
        ray_options = None
        if ray or ray_address:
            from hrx.runtime.distributed import RayOptions

            ray_options = RayOptions(address=ray_address, actors=ray_actors)
    rows = _Rows(_open_report(report_path, run_id, skip_existing, jobs, len(videos)) if report_path is not None
                 else None)
    settings = dict(outscale=outscale, width=width, height=height)
    videos_only = bool(videos) and not jobs
    try:
        if videos:
            video_results = run_videos_here(request, pool, videos, overlap, merge.value, vopts, quiet, skip_existing,
                                            ray_options, on_result=rows.video, on_error=options.on_error)
        if not videos_only:
            if ray or ray_address:  # Ray Data actors: hrx.runtime.distributed
                report, info, spec, source = _run_on_ray(request, jobs, overlap, merge.value, options, ray_address,
                                                         ray_actors, quiet, rows, bundled)
            else:
                report, info, spec, source = _run_here(request, pool, jobs, overlap, merge.value, options, quiet,
                                                       rows, bundled)
    except BaseException as e:  # the report says what was done before the run ended
        rows.finish(json_path, request.backend, settings, interrupted=isinstance(e, (KeyboardInterrupt, SystemExit)),
                    error=e)
        raise
    if videos_only:
        rows.finish(None, request.backend, settings)  # the report's summary line; --json and the exit below
        _gallery(html, rows, request.backend, request.precision, request.engine or request.model, quiet)
        return finish_videos(video_results, json_path)
    summary = report.to_dict()
    summary.update(model=str(source), model_scale=info.scale, tile=spec.tile, overlap=spec.tile - spec.stride,
                   merge=spec.merge, **settings)
    if videos:
        summary["videos"] = [r.to_dict() for r in video_results]
    rows.finish(json_path, summary=summary)
    _gallery(html, rows, report.backend, request.precision if request.precision != "auto" else info.precision, source,
             quiet, report.seconds)
    if not quiet:
        typer.echo(f"{summary['done']} done, {summary['failed']} failed, {summary['skipped']} skipped in "
                   f"{report.seconds:.1f} s: {summary['input_megapixels_per_second']:.3f} MP/s in, "
                   f"{report.output_megapixels / max(report.seconds, 1e-9):.2f} MP/s out, backend {report.backend}",
                   err=True)
    if videos:
        finish_videos(video_results, None, raise_failed=not summary["failed"])
    if summary["failed"]:
        failed = [r for r in report.results if r.status == "failed"]
        not_run = [r for r in failed if not r.attempted]
        why = f" ({len(not_run)} not run)" if not_run else ""
        raise fail(f"{summary['failed']} of {len(jobs)} images failed{why}", max(r.exit_code or 1 for r in failed))


def _gallery(html: Optional[Path], rows: "_Rows", backend: str, precision: str, model, quiet: bool,
             seconds: float = 0.0) -> None:
    """``--html``: the page of every image and video finished (hrx.runtime.gallery)."""
    if html is None:
        return
    from hrx.runtime.gallery import RunFacts, write_gallery

    seconds = seconds or sum(r.seconds for r in (*rows.results, *rows.videos))
    written = write_gallery(html, rows.results, rows.videos, RunFacts(backend, precision, str(model), seconds))
    if not quiet:
        typer.echo(f"page: {written}", err=True)


def _open_report(path: Path, run_id: str, resume: bool, jobs, videos: int = 0) -> ReportWriter:
    """The ``--report`` writer, its first line counting the run's ``jobs`` (images) and ``videos``; resuming
    (``--skip-existing``) appends, and first removes the temporary files the unfinished runs of that report
    left beside this run's image outputs (a video resumes from its work folder instead)."""
    from hrx.paths import remove_temporaries
    from hrx.runtime.report import read_report, unfinished_runs

    writer = ReportWriter(path, run_id, append=resume)
    if resume:
        for run in unfinished_runs(read_report(path)):
            remove_temporaries([j.output for j in jobs], run)
    writer.start(len(jobs), videos)
    return writer


class _Rows:
    """Every finished image and video, as it finishes: kept for an interrupted run's summary, and appended to
    the ``--report`` file (flushed to disk) when there is one."""

    def __init__(self, writer: "ReportWriter | None") -> None:
        self.writer, self.results, self.videos, self.lock = writer, [], [], threading.Lock()

    def __call__(self, result) -> None:
        with self.lock:
            self.results.append(result)
        if self.writer is not None:
            self.writer.image(result)

    def video(self, result) -> None:
        with self.lock:
            self.videos.append(result)
        if self.writer is not None:
            self.writer.video(result)

    def finish(self, json_path: Optional[Path], backend: str = "", settings: Optional[dict] = None,
               summary: Optional[dict] = None, interrupted: bool = False, error: BaseException | None = None) -> None:
        """The summary line and ``--json``: the run's own summary, or (a run of videos only, or one that
        ended early) one built from the images and videos finished so far."""
        from hrx.runtime.pipeline import BatchReport

        if summary is None:
            with self.lock:
                summary = BatchReport(backend, list(self.results)).to_dict()
                if self.videos:
                    summary["videos"] = [r.to_dict() for r in self.videos]
            summary.update(settings or {})
            summary["interrupted"] = interrupted
            if error is not None and not interrupted:
                summary["error"] = str(error) if isinstance(error, HRXError) else type(error).__name__
        else:
            summary = dict(summary, interrupted=False)
        try:
            if self.writer is not None:
                self.writer.summary(summary)
        finally:
            if self.writer is not None:
                self.writer.close()
        if json_path is not None:
            _write_json(json_path, summary)


def _once(echo):
    """``echo`` that prints each distinct line once (workers opening backends repeat the same notes)."""
    seen: set[str] = set()
    lock = threading.Lock()

    def log(line: str) -> None:
        with lock:
            if line in seen:
                return
            seen.add(line)
        echo(line)

    return log


def _sixteen_bit_images(jobs, fmt: str) -> bool:
    """Whether an image will be written with 16 bits per channel: a 16-bit input in a format that keeps
    them (headers only)."""
    from hrx.runtime.images import EIGHT_BIT_FORMATS, sixteen_bit

    return fmt not in EIGHT_BIT_FORMATS and any(sixteen_bit(job.source) for job in jobs)


def _deep_videos(videos, pix_fmt: Optional[str]) -> bool:
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


def _resolve(request, quiet: bool):
    """Backend and precision decided once for every worker; the precision line comes first."""
    from hrx.runtime.factory import resolve_request

    request, choice = resolve_request(request)
    if choice is not None and not quiet:
        typer.echo(choice.line, err=True)
    return request


def _auto_workers(cpu_sessions: bool, threads: int, jobs, engine: Optional[Path], overlap: Optional[int]) -> int:
    """One single-thread session per core for OpenVINO and ONNX Runtime CPU; but one image of fewer tile batches than
    that gets as many sessions as it has batches (one small image: one session with every core)."""
    from hrx.runtime.pool import auto_workers, batches_in

    workers = auto_workers(cpu_sessions, threads)
    if workers > 1 and len(jobs) == 1 and engine is not None and engine.is_file():
        from hrx.interface import ModelInfo

        try:
            batches = batches_in(jobs[0].source, ModelInfo.from_onnx(engine), overlap)
        except HRXError:  # not an HRX export: opening it fails later with the full message
            batches = None
        if batches is not None:
            workers = max(1, min(workers, batches))
    return workers


def _bundled_by_name(engine: Path) -> Path:
    """``--engine default-x1``: a bundled model's name stands for its shipped ONNX file (or its export, made
    once); any other missing path is left for the usual "not found" error."""
    from hrx.checkpoint import bundled_models
    from hrx.runtime.factory import default_engine

    if str(engine) not in bundled_models():
        return engine
    return default_engine(str(engine))


def _bundled_onnx() -> Path:
    """The shipped ONNX file of the default model (its tile and batch are those of any export of it)."""
    from hrx.checkpoint import bundled_onnx
    from hrx.runtime.factory import DEFAULT_MODEL

    return bundled_onnx(DEFAULT_MODEL)


def _named(step, source):
    """``step()``, with its one-line error naming the model file ``source`` when it does not already (an
    error found while opening or gating a model is about that file)."""
    from hrx.errors import MissingDependencyError

    try:
        return step()
    except HRXError as e:
        if source is None or str(source) in str(e) or str(e).startswith("--") or isinstance(e, MissingDependencyError):
            raise  # named already, about a flag, or about what to install
        named = HRXError(f"{source}: {e}")
        named.exit_code = e.exit_code
        raise named from e


def _run_here(request, pool, jobs, overlap, merge, options, quiet, rows, bundled: bool = False):
    """This process: one backend per worker of ``pool``."""
    from hrx.runtime.factory import DEFAULT_MODEL
    from hrx.runtime.pool import run_pool
    from hrx.runtime.tiling import TileSpec

    from hrx.runtime.pool import open_workers

    runners = _named(lambda: open_workers(request, pool), request.engine or request.model)

    def spec_for(runner) -> TileSpec:
        return TileSpec.from_info(runner.info, overlap, merge)

    try:
        source = f"bundled {DEFAULT_MODEL}" if bundled else (request.engine or request.model or
                                                             f"{request.model_name} at {request.url}")
        try:
            info, spec = runners[0].info, spec_for(runners[0])
        except HRXError as e:  # the model's tile / overlap (from its file) do not make a tiling
            raise HRXError(f"{source}: {e}") from e
        where = f", {len(pool)} workers ({', '.join(w.label for w in pool)})" if len(pool) > 1 else ""
        if not quiet:
            typer.echo(f"backend: {runners[0].name} ({source}: {info.arch} x{info.scale}, {info.in_channels} channels, "
                       f"tile {spec.tile}, batch {spec.batch}, overlap {spec.tile - spec.stride}, {spec.merge}{where})",
                       err=True)
        with _Progress(len(jobs), enabled=not quiet and is_interactive(), on_result=rows) as progress:
            report = run_pool(runners, pool, jobs, spec_for, options, progress)
    finally:
        for runner in runners:
            runner.close()
    return report, info, spec, source


def _run_on_ray(request, jobs, overlap, merge, options, address, actors, quiet, rows, bundled: bool = False):
    """Ray Data actors (hrx.runtime.distributed); the driver reads the model's metadata only."""
    from hrx.runtime.distributed import RayOptions, exported_model_info, run_batch_ray
    from hrx.runtime.factory import DEFAULT_MODEL, default_engine
    from hrx.runtime.tiling import TileSpec

    source = f"bundled {DEFAULT_MODEL}" if bundled or request.engine is None else request.engine
    if request.engine is None:  # export the bundled model once here, not once per actor
        request = dataclasses.replace(request, engine=default_engine(DEFAULT_MODEL, log=request.log))
    engine = Path(request.engine)
    if not engine.is_file():
        raise fail(f"{engine}: no such engine file")
    info = exported_model_info(engine)
    request = dataclasses.replace(request, engine=engine.resolve())
    spec = TileSpec.from_info(info, overlap, merge)
    where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
    if not quiet:
        typer.echo(f"backend: ray on {where} ({source}: {info.arch} x{info.scale}, {info.in_channels} channels, "
                   f"tile {spec.tile}, batch {spec.batch}, overlap {spec.tile - spec.stride}, {spec.merge})", err=True)
    ray_options = RayOptions(address=address, actors=actors)
    report = run_batch_ray(request, jobs, overlap, merge, options, ray_options,
                           _Progress(len(jobs), enabled=False, on_result=rows))
    return report, info, spec, source


class _Progress(ProgressBars):
    """Files and tiles bars on stderr (rich); errors printed above the bars, one line each."""

    def __init__(self, total: int, enabled: bool, on_result=None) -> None:
        super().__init__(enabled)
        self.on_result, self.not_run_shown = on_result, False
        if enabled:
            self.files = self.bars.add_task("images", total=total)
            self.tiles = self.bars.add_task("tiles", total=1)

    def start_image(self, job, tiles: int) -> None:
        if self.enabled:
            self.bars.reset(self.tiles, total=tiles, description=f"tiles of {job.source.name}")

    def advance_tiles(self, n: int) -> None:
        if self.enabled:
            self.bars.advance(self.tiles, n)

    def finish_image(self, result) -> None:
        if self.on_result is not None:
            self.on_result(result)
        if result.status == "failed" and not result.attempted:  # images never tried: the first one's line only
            if self.not_run_shown:
                return self._advance()
            self.not_run_shown = True
        if result.status == "failed":
            self.print(f"error: {result.reason}")
        self._advance()

    def _advance(self) -> None:
        if self.enabled:
            self.bars.advance(self.files)


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=2) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        return
    from hrx.paths import atomic_write_bytes

    atomic_write_bytes(path, text.encode())
