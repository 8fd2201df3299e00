"""``hrx upscale`` as one call: :func:`run_upscale` takes an :class:`UpscaleRequest` (what the command was
asked) and does the whole run. It splits the inputs into images and videos, plans the image jobs and the
workers, checks the inputs before any model work, resolves the backend and precision once, opens the
backends with one policy for images and videos (:func:`open_backends`), runs the videos and then the images
(here or on Ray Data actors), writes ``--report`` / ``--json`` / ``--html``, and returns an
:class:`UpscaleOutcome`. How the run is shown is the caller's (:class:`UpscaleView`: lines on stderr by
default; the CLI draws progress bars and decides the last lines and the exit code from the outcome)."""
from __future__ import annotations

import dataclasses
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from hrx.errors import HRXError
from hrx.runtime.images import DEFAULT_PNG_LEVEL
from hrx.runtime.pipeline import BatchOptions, BatchReport, ImageResult, Job
from hrx.runtime.precision_policy import DEFAULT_MIN_PSNR

if TYPE_CHECKING:
    from hrx.interface import Backend
    from hrx.runtime.factory import BackendRequest
    from hrx.runtime.pool import Worker
    from hrx.runtime.report import ReportRows
    from hrx.runtime.video.batch import VideoJob


@dataclass(frozen=True)
class UpscaleRequest:
    """What ``hrx upscale`` was asked: its options, with ``--frames`` / ``--video-opt`` as given."""
    inputs: tuple[Path, ...]
    output: Path  # folder; for one video, a file name
    recursive: bool = False
    # the model (hrx.runtime.factory.BackendRequest); neither engine nor model nor url: the bundled default
    engine: Path | None = None  # .onnx / .engine / .plan, or a bundled model's name
    model: str | None = None  # checkpoint or bundled name, run with PyTorch
    backend: str = "auto"
    precision: str = "auto"
    min_psnr: float = DEFAULT_MIN_PSNR
    gate_images: Path | None = None
    tile: int | None = None
    batch: int | None = None
    url: str | None = None  # Triton
    model_name: str | None = None
    timeout: float = 60.0
    overlap: int | None = None  # None: the model's tile_overlap
    merge: str = "blend"
    # the images (hrx.runtime.pipeline.BatchOptions)
    fmt: str = "png"
    quality: int = 95
    png_level: int = DEFAULT_PNG_LEVEL
    alpha: str = "bicubic"
    outscale: float | None = None
    width: int | None = None
    height: int | None = None
    skip_existing: bool = False
    max_pixels: int = 50_000_000
    # where the model runs
    devices: tuple[int, ...] | None = None  # CUDA devices, one worker each (--device N: (N,))
    workers: int = 0  # CPU sessions; 0: one per core for OpenVINO and ONNX Runtime CPU, else 1
    threads: int = 0  # CPU intra-op threads in all (0: every core)
    ray: bool = False
    ray_address: str | None = None
    ray_actors: int = 0
    # reports
    json_path: Path | None = None  # '-': stdout
    report_path: Path | None = None
    html: Path | None = None
    # videos (hrx.runtime.video.VideoOptions)
    video_codec: str | None = None
    crf: int | None = None
    preset: str | None = None
    pix_fmt: str | None = None
    video_opt: tuple[str, ...] = ()  # KEY=VALUE
    frames: str | None = None  # A:B
    start: float | None = None
    end: float | None = None
    segment_frames: int = 240
    strict: bool = False

    @property
    def on_ray(self) -> bool:
        """``--ray`` or ``--ray-address``."""
        return bool(self.ray or self.ray_address)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Lines:
    """A display without bars: each line goes to ``echo`` (default: stderr)."""

    def __init__(self, echo: Callable[[str], None] = _stderr) -> None:
        self.echo = echo

    def __enter__(self) -> "Lines":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def print(self, line: str) -> None:
        """One line (an error, a finished video)."""
        self.echo(line)

    def start_image(self, job: Job, tiles: int) -> None:
        """Nothing to draw."""

    def advance_tiles(self, n: int) -> None:
        """Nothing to draw."""

    def advance_file(self) -> None:
        """Nothing to draw."""

    def start_video(self, source: Path, frames: int) -> None:
        """Nothing to draw."""

    def advance_frames(self, n: int) -> None:
        """Nothing to draw."""


@dataclass
class UpscaleView:
    """How a run is shown. This one writes lines to stderr and draws no bars; ``hrx upscale`` passes one that
    draws progress bars on a terminal. A display is a context manager with the methods of :class:`Lines`
    (for images ``start_image`` / ``advance_tiles`` / ``advance_file``, for videos ``start_video`` /
    ``advance_frames``, and ``print``). ``quiet``: errors and warnings only; ``on_error``: every exception
    that failed an image or a video (``--debug``: its traceback)."""
    quiet: bool = False
    on_error: Optional[Callable[[BaseException], None]] = None

    def echo(self, line: str) -> None:
        """A line on stderr."""
        _stderr(line)

    def image_display(self, total: int) -> Any:
        """The display of ``total`` images run here."""
        return Lines(self.echo)

    def video_display(self) -> Any:
        """The display of the videos, one after the other."""
        return Lines(self.echo)


@dataclass
class UpscaleOutcome:
    """What a run did: the images' report and ``--json`` summary (``None`` for a run of videos only) and
    the result of every video."""
    images: int  # image jobs planned
    report: BatchReport | None = None
    summary: dict | None = None
    videos: list = field(default_factory=list)

    @property
    def failed_images(self) -> list[ImageResult]:
        """The images that failed, tried or not."""
        return [r for r in self.report.results if r.status == "failed"] if self.report is not None else []

    @property
    def failed_videos(self) -> int:
        """How many videos failed."""
        return sum(r.status == "failed" for r in self.videos)


@dataclass(frozen=True)
class _Plan:
    jobs: list[Job]
    videos: list[VideoJob]
    pool: list[Worker]
    options: BatchOptions
    backend: BackendRequest  # resolved: backend and precision decided
    bundled: bool  # the bundled default model (so named in the lines)
    run_id: str


def run_upscale(request: UpscaleRequest, view: UpscaleView | None = None) -> UpscaleOutcome:
    """Upscale the images and videos of ``request`` (see the module doc). Raises :class:`HRXError` for what
    stops the run before it starts; a file that fails is a ``failed`` row, and the caller decides the exit."""
    from hrx.runtime.report import ReportRows, open_report
    from hrx.runtime.video.batch import upscale_videos, video_options

    view = view or UpscaleView()
    if request.html is not None:  # before any work
        from hrx.pages import check_page_path

        check_page_path(request.html)
    if request.on_ray and (request.model is not None or request.backend in ("torch", "triton") or request.url
                           or request.model_name):
        raise _error("--ray runs exported models: pass --engine model.onnx (or .engine), not --model / --backend "
                     f"{request.backend}", 2)
    plan = _plan(request, view)
    video_opts = video_options(request, plan.options) if plan.videos else None
    writer = (open_report(request.report_path, plan.run_id, request.skip_existing, plan.jobs, len(plan.videos))
              if request.report_path is not None else None)
    rows = ReportRows(writer)
    settings = dict(outscale=request.outscale, width=request.width, height=request.height)
    video_results, ran = [], None
    try:
        if plan.videos:
            video_results = upscale_videos(request, plan.backend, plan.pool, plan.videos, video_opts, view,
                                           rows.video)
        if plan.jobs or not plan.videos:
            ran = _run_images(request, plan, view, rows)
    except BaseException as e:  # the report says what was done before the run ended
        rows.finish(request.json_path, plan.backend.backend, settings,
                    interrupted=isinstance(e, (KeyboardInterrupt, SystemExit)), error=e)
        raise
    if ran is None:
        return _finish_videos(request, plan, video_results, view, rows, settings)
    report, info, spec, source = ran
    summary = report.to_dict()
    summary.update(model=str(source), model_scale=info.scale, tile=spec.tile, overlap=spec.tile - spec.stride,
                   merge=spec.merge, **settings)
    if plan.videos:
        summary["videos"] = [r.to_dict() for r in video_results]
    rows.finish(request.json_path, summary=summary)
    precision = plan.backend.precision if plan.backend.precision != "auto" else info.precision
    _gallery(request.html, rows, report.backend, precision, source, view, report.seconds)
    return UpscaleOutcome(len(plan.jobs), report, summary, video_results)


def _finish_videos(request: UpscaleRequest, plan: _Plan, results: list, view: UpscaleView, rows: ReportRows,
                   settings: dict) -> UpscaleOutcome:
    """A run of videos only: the report's summary line, the page, ``--json``."""
    from hrx.runtime.report import write_json
    from hrx.runtime.video.batch import video_summary

    backend = plan.backend
    rows.finish(None, backend.backend, settings)
    _gallery(request.html, rows, backend.backend, backend.precision, backend.engine or backend.model, view)
    if request.json_path is not None:
        write_json(request.json_path, video_summary(results))
    return UpscaleOutcome(0, None, None, results)


def _plan(request: UpscaleRequest, view: UpscaleView) -> _Plan:
    """Inputs split and checked, jobs and workers planned, the backend resolved: everything before the run."""
    from hrx.paths import new_run_id
    from hrx.checkpoint import bundled_onnx
    from hrx.runtime.factory import DEFAULT_MODEL, BackendRequest, engine_by_name
    from hrx.runtime.images import configure_pillow
    from hrx.runtime.pipeline import check_inputs, plan_jobs
    from hrx.runtime.pool import plan_workers, runs_cpu_sessions, workers_for
    from hrx.runtime.video.batch import deep_videos, split_inputs

    engine = engine_by_name(request.engine) if request.engine is not None else None
    run_id = new_run_id()
    options = BatchOptions(request.fmt, request.quality, request.skip_existing, request.max_pixels, request.alpha,
                           request.outscale, request.width, request.height, _once(view.echo, "warning: "), run_id,
                           view.on_error, request.png_level)
    videos, inputs = split_inputs(request.inputs, request.output, request.recursive)
    jobs = plan_jobs(inputs, request.output, request.fmt, request.recursive) if inputs else []
    cpu = request.devices is None and request.url is None and request.model_name is None and not request.on_ray
    onnx = engine if engine is not None or request.model is not None else bundled_onnx(DEFAULT_MODEL)
    workers = request.workers or workers_for(jobs, cpu and runs_cpu_sessions(engine, request.model, request.backend),
                                             request.threads, onnx, request.overlap)
    pool = plan_workers(list(request.devices) if request.devices is not None else None, workers, request.threads)
    if jobs:
        check_inputs(jobs, request.output)  # before any model work (a first run exports the bundled model: slow)
    configure_pillow(request.max_pixels)
    if videos:  # before any model work (the precision gate runs models)
        from hrx.extras import require

        require("video", f"upscaling videos ({videos[0].source})")
    deep = request.precision == "auto" and request.backend in ("auto", "openvino") and (
        sixteen_bit_images(jobs, request.fmt) or deep_videos(videos, request.pix_fmt))
    backend = BackendRequest(engine, request.model, request.backend, request.tile, request.batch, 0,
                             log=None if view.quiet else _once(view.echo), url=request.url,
                             model_name=request.model_name, timeout=request.timeout, precision=request.precision,
                             min_psnr=request.min_psnr, gate_images=request.gate_images, deep_output=deep)
    bundled = engine is None and request.model is None and request.url is None and request.model_name is None
    backend = _named(lambda: _resolve(backend, view), engine or request.model)
    return _Plan(jobs, videos, pool, options, backend, bundled, run_id)


def _error(message: str, code: int) -> HRXError:
    error = HRXError(message)
    error.exit_code = code
    return error


def _once(echo: Callable[[str], None], prefix: str = "") -> Callable[[str], None]:
    """``echo`` that prints each distinct line once, after ``prefix`` (workers opening backends repeat the
    same notes; a warning comes once per run, from any worker)."""
    seen: set[str] = set()
    lock = threading.Lock()

    def log(line: str) -> None:
        with lock:
            if line in seen:
                return
            seen.add(line)
        echo(f"{prefix}{line}")

    return log


def sixteen_bit_images(jobs: Sequence[Job], fmt: str) -> bool:
    """Whether an image will be written with 16 bits per channel: a 16-bit input in a format that keeps
    them (headers only)."""
    from hrx.runtime.images import EIGHT_BIT_FORMATS, sixteen_bit

    return fmt not in EIGHT_BIT_FORMATS and any(sixteen_bit(job.source) for job in jobs)


def _resolve(request: BackendRequest, view: UpscaleView) -> BackendRequest:
    """Backend and precision decided once for every worker; the precision line comes first."""
    from hrx.runtime.factory import resolve_request

    request, choice = resolve_request(request)
    if choice is not None and not view.quiet:
        view.echo(choice.line)
    return request


def _named(step: Callable[[], Any], source: Any) -> Any:
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


def open_backends(request: BackendRequest, pool: Sequence[Worker], videos: bool = False) -> list[Backend]:
    """The backends of ``pool`` for a resolved ``request``, one policy for images and videos: every CPU worker's
    session (they share the tiles), one backend per CUDA device; videos, whose frames go one after the
    other, run on the first CUDA device only. An error opening the model names its file."""
    from hrx.runtime.pool import open_workers

    workers = pool[:1] if videos and pool[0].kind == "cuda" else pool
    return _named(lambda: open_workers(request, workers), request.engine or request.model)


def _source(plan: _Plan) -> Any:
    """The model as the lines name it."""
    from hrx.runtime.factory import DEFAULT_MODEL

    backend = plan.backend
    return f"bundled {DEFAULT_MODEL}" if plan.bundled else (backend.engine or backend.model or
                                                          f"{backend.model_name} at {backend.url}")


def _run_images(request: UpscaleRequest, plan: _Plan, view: UpscaleView, rows: ReportRows) -> tuple:
    """The images, here or on Ray: ``(report, model info, tile spec, the model as named)``."""
    if request.on_ray:  # Ray Data actors: hrx.runtime.distributed
        return _images_on_ray(request, plan, view, rows)
    from hrx.runtime.pool import run_pool
    from hrx.runtime.tiling import TileSpec

    runners = open_backends(plan.backend, plan.pool)

    def spec_for(runner: Backend) -> TileSpec:
        return TileSpec.from_info(runner.info, request.overlap, request.merge)

    try:
        source = _source(plan)
        try:
            info, spec = runners[0].info, spec_for(runners[0])
        except HRXError as e:  # the model's tile / overlap (from its file) do not make a tiling
            raise HRXError(f"{source}: {e}") from e
        pool = plan.pool
        where = f", {len(pool)} workers ({', '.join(w.label for w in pool)})" if len(pool) > 1 else ""
        if not view.quiet:
            view.echo(f"backend: {runners[0].name} ({source}: {info.arch} x{info.scale}, {info.in_channels} channels, "
                      f"tile {spec.tile}, batch {spec.batch}, overlap {spec.tile - spec.stride}, {spec.merge}{where})")
        with view.image_display(len(plan.jobs)) as display:
            report = run_pool(runners, pool, plan.jobs, spec_for, plan.options, _ImageProgress(display, rows))
    finally:
        for runner in runners:
            runner.close()
    return report, info, spec, source


def ray_model(backend: BackendRequest) -> tuple[BackendRequest, Any]:
    """``--ray``: the exported file every node opens, as an absolute path in ``backend``, and its metadata
    (:class:`hrx.interface.ModelInfo`). The bundled default is exported here once, not once per actor; this
    process opens no backend."""
    from hrx.runtime.distributed import exported_model_info
    from hrx.runtime.factory import DEFAULT_MODEL, default_engine

    if backend.engine is None:
        backend = dataclasses.replace(backend, engine=default_engine(DEFAULT_MODEL, log=backend.log))
    engine = Path(backend.engine)
    if not engine.is_file():
        raise HRXError(f"{engine}: no such engine file")
    return dataclasses.replace(backend, engine=engine.resolve()), exported_model_info(engine)


def _images_on_ray(request: UpscaleRequest, plan: _Plan, view: UpscaleView, rows: ReportRows) -> tuple:
    """Ray Data actors (hrx.runtime.distributed); this process reads the model's metadata only."""
    from hrx.runtime.distributed import RayOptions, run_batch_ray
    from hrx.runtime.factory import DEFAULT_MODEL
    from hrx.runtime.tiling import TileSpec

    source = f"bundled {DEFAULT_MODEL}" if plan.bundled or plan.backend.engine is None else plan.backend.engine
    backend, info = ray_model(plan.backend)
    spec = TileSpec.from_info(info, request.overlap, request.merge)
    address = request.ray_address
    where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
    if not view.quiet:
        view.echo(f"backend: ray on {where} ({source}: {info.arch} x{info.scale}, {info.in_channels} channels, "
                  f"tile {spec.tile}, batch {spec.batch}, overlap {spec.tile - spec.stride}, {spec.merge})")
    report = run_batch_ray(backend, plan.jobs, request.overlap, request.merge, plan.options,
                           RayOptions(address=address, actors=request.ray_actors),
                           _ImageProgress(Lines(view.echo), rows))
    return report, info, spec, source


class _ImageProgress:
    """The images' progress (:class:`hrx.runtime.pipeline.Progress`) drawn on a display: each finished image
    to ``on_result`` (the report rows), each failure's one line above the bars; of the images never tried
    (the backend went down) only the first one's line."""

    def __init__(self, display: Any, on_result: Callable[[ImageResult], None]) -> None:
        self.display, self.on_result, self.not_run_shown = display, on_result, False

    def start_image(self, job: Job, tiles: int) -> None:
        self.display.start_image(job, tiles)

    def advance_tiles(self, n: int) -> None:
        self.display.advance_tiles(n)

    def finish_image(self, result: ImageResult) -> None:
        self.on_result(result)
        if result.status == "failed" and not result.attempted:
            if self.not_run_shown:
                return self.display.advance_file()
            self.not_run_shown = True
        if result.status == "failed":
            self.display.print(f"error: {result.reason}")
        self.display.advance_file()


def _gallery(html: Path | None, rows: ReportRows, backend: str, precision: str, model: Any, view: UpscaleView,
             seconds: float = 0.0) -> None:
    """``--html``: the page of every image and video finished (hrx.runtime.gallery)."""
    if html is None:
        return
    from hrx.runtime.gallery import RunFacts, write_gallery

    seconds = seconds or sum(r.seconds for r in (*rows.results, *rows.videos))
    written = write_gallery(html, rows.results, rows.videos, RunFacts(backend, precision, str(model), seconds))
    if not view.quiet:
        view.echo(f"page: {written}")
