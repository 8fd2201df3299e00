"""``hrx upscale``: upscale files and folders of images with an ONNX / TensorRT engine or a checkpoint."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from hrx.cli.common import (ProgressBars, choices, debug_enabled, fail, handle_errors, is_interactive,
                            print_traceback)
from hrx.runtime.factory import BACKENDS  # the choices come from the runtime's tuples (light modules: numpy)
from hrx.runtime.images import DEFAULT_PNG_LEVEL, FORMATS
from hrx.runtime.picture import ALPHA_MODES
from hrx.runtime.precision_policy import DEFAULT_MIN_PSNR, PRECISION_CHOICES
from hrx.runtime.tiling import MERGE_MODES
from hrx.runtime.upscale_run import UpscaleView

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
    from hrx.runtime.pool import parse_devices
    from hrx.runtime.upscale_run import UpscaleRequest, run_upscale

    if device is not None and devices is not None:
        raise fail("pass either --device or --devices, not both")
    request = UpscaleRequest(
        tuple(inputs), output, recursive, engine=engine, model=model, backend=backend.value,
        precision=precision.value, min_psnr=min_psnr, gate_images=gate_images, tile=tile, batch=batch, url=url,
        model_name=model_name, timeout=timeout, overlap=overlap, merge=merge.value, fmt=fmt.value, quality=quality,
        png_level=png_level, alpha=alpha.value, outscale=outscale, width=width, height=height,
        skip_existing=skip_existing, max_pixels=max_pixels,
        devices=tuple(parse_devices(devices)) if devices is not None else ((device,) if device is not None else None),
        workers=workers, threads=threads, ray=ray, ray_address=ray_address, ray_actors=ray_actors,
        json_path=json_path, report_path=report_path, html=html, video_codec=video_codec, crf=crf, preset=preset,
        pix_fmt=pix_fmt, video_opt=tuple(video_opt or ()), frames=frames, start=start, end=end,
        segment_frames=segment_frames, strict=strict)
    outcome = run_upscale(request, _View(quiet, print_traceback if debug_enabled(debug) else None))
    report, summary = outcome.report, outcome.summary
    if report is not None and not quiet:
        typer.echo(f"{summary['done']} done, {summary['failed']} failed, {summary['skipped']} skipped in "
                   f"{report.seconds:.1f} s: {summary['input_megapixels_per_second']:.3f} MP/s in, "
                   f"{report.output_megapixels / max(report.seconds, 1e-9):.2f} MP/s out, backend {report.backend}",
                   err=True)
    failed = outcome.failed_images
    if failed:
        not_run = [r for r in failed if not r.attempted]
        why = f" ({len(not_run)} not run)" if not_run else ""
        raise fail(f"{len(failed)} of {outcome.images} images failed{why}", max(r.exit_code or 1 for r in failed))
    if outcome.failed_videos:
        raise fail(f"{outcome.failed_videos} of {len(outcome.videos)} videos failed")


class _View(UpscaleView):
    """Lines through typer on stderr; progress bars (rich) while stderr is a terminal and not --quiet."""

    def echo(self, line: str) -> None:
        typer.echo(line, err=True)

    def image_display(self, total: int) -> "ImageBars":
        return ImageBars(total, enabled=not self.quiet and is_interactive())

    def video_display(self) -> "FrameProgress":
        return FrameProgress(enabled=not self.quiet and is_interactive())


class ImageBars(ProgressBars):
    """Files and tiles bars on stderr (rich); error lines printed above the bars."""

    def __init__(self, total: int, enabled: bool) -> None:
        super().__init__(enabled)
        if enabled:
            self.files = self.bars.add_task("images", total=total)
            self.tiles = self.bars.add_task("tiles", total=1)

    def start_image(self, job, tiles: int) -> None:
        """The tiles bar starts over for ``job``."""
        if self.enabled:
            self.bars.reset(self.tiles, total=tiles, description=f"tiles of {job.source.name}")

    def advance_tiles(self, n: int) -> None:
        """``n`` more tiles done."""
        if self.enabled:
            self.bars.advance(self.tiles, n)

    def advance_file(self) -> None:
        """One more image finished."""
        if self.enabled:
            self.bars.advance(self.files)


class FrameProgress(ProgressBars):
    """Frames, fps and ETA of the video being upscaled (rich, on stderr), when interactive."""

    def __init__(self, enabled: bool) -> None:
        super().__init__(enabled)
        self.task = None
        self.started = 0.0
        self.done = 0

    def columns(self) -> list:
        """What is done, the bar, frames done of total, fps, time taken, time left."""
        from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[fps]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]

    def start_video(self, source: Path, frames: int) -> None:
        """A new frames bar for ``source``."""
        if self.enabled:
            if self.task is not None:
                self.bars.remove_task(self.task)
            self.task = self.bars.add_task(f"frames of {source.name}", total=frames, fps="")
            self.started, self.done = time.perf_counter(), 0

    def advance_frames(self, n: int) -> None:
        """``n`` more frames done; the fps so far."""
        if self.enabled:
            self.done += n
            fps = self.done / max(time.perf_counter() - self.started, 1e-9)
            self.bars.update(self.task, advance=n, fps=f"{fps:.2f} fps")
