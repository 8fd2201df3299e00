"""Upscale a batch of image files: plan the outputs, then decode, infer and encode with the three overlapping.

Decoding of the next file and encoding of the previous one run on two worker threads while the backend
works on the current image on the calling thread, so the engine does not wait on the disk. At most three
images are alive at once (next decoded, current, previous being written): memory is bounded by the image
sizes, not by the folder.

One picture's channels, output size and resampling: :mod:`hrx.runtime.picture`.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from hrx.errors import BackendDown, HRXError, OutputBusy, one_line
from hrx.paths import IMAGE_SUFFIXES, OutputLock, hold_lock, is_image_file, lock_name
from hrx.interface import Backend
from hrx.runtime.images import (DEFAULT_MAX_PIXELS, DEFAULT_PNG_LEVEL, EIGHT_BIT_FORMATS, FORMATS, Picture, quantize,
                                read_image, write_image)
from hrx.runtime.picture import model_passes, output_size, resample_picture, upscale_picture
from hrx.runtime.tiling import TileSpec, tile_count, upscale_tiled, upscale_whole


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path
    error: str | None = None  # set when the input itself is unusable (missing path, ...)


@dataclass(frozen=True)
class BatchOptions:
    fmt: str = "png"
    quality: int = 95
    skip_existing: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    alpha: str = "bicubic"
    outscale: float | None = None  # final scale instead of the model's (model, then Lanczos / area)
    width: int | None = None  # final width (height kept in proportion); with height: fit inside both
    height: int | None = None
    warn: Callable[[str], None] | None = None  # lossy choices the user made (16-bit to an 8-bit format)
    run_id: str = ""  # tags this run's temporary files (hrx.paths.new_run_id)
    on_error: Callable[[BaseException], None] | None = None  # every exception that failed an image (--debug)
    png_level: int = DEFAULT_PNG_LEVEL  # zlib level of PNG and 16-bit TIFF outputs (size and speed, not pixels)

    def __post_init__(self) -> None:
        if self.outscale is not None and (self.width or self.height):
            raise HRXError("pass either --outscale or --width/--height, not both")
        if self.outscale is not None and not (0 < self.outscale <= 64):
            raise HRXError(f"--outscale must be in (0, 64], not {self.outscale}")
        if any(v is not None and v < 1 for v in (self.width, self.height)):
            raise HRXError("--width and --height must be >= 1")


@dataclass
class ImageResult:
    source: str
    output: str
    status: str  # "done", "failed", "skipped"
    reason: str = ""
    width: int = 0
    height: int = 0
    out_width: int = 0
    out_height: int = 0
    tiles: int = 0
    seconds: float = 0.0
    worker: str = ""  # which backend ran it, with several (``cuda:1``, ``cpu:0``)
    scale: float = 0.0  # the scale used: output width / input width
    model_scale: int = 0  # the model's scale, 0 when the model was skipped (the result is not larger)
    resample: str = ""  # after the model: "" (none), "lanczos" (up) or "area" (down)
    bits: int = 0  # bits per channel written (8 or 16)
    error: str = ""  # failed: the exception's type ("HRXError", "RuntimeError", "OSError", ...)
    exit_code: int = 0  # failed: the exit code this failure asks for (2: the backend went down)
    attempted: bool = True  # False: failed without being tried (the backend was already down)


@dataclass
class BatchReport:
    backend: str
    results: list[ImageResult] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def input_megapixels(self) -> float:
        return sum(r.width * r.height for r in self.results if r.status == "done") / 1e6

    @property
    def output_megapixels(self) -> float:
        return sum(r.out_width * r.out_height for r in self.results if r.status == "done") / 1e6

    def to_dict(self) -> dict:
        rate = self.seconds and self.input_megapixels / self.seconds
        return {"backend": self.backend, "done": self.count("done"), "failed": self.count("failed"),
                "skipped": self.count("skipped"), "seconds": round(self.seconds, 3),
                "input_megapixels": round(self.input_megapixels, 4),
                "output_megapixels": round(self.output_megapixels, 4),
                "input_megapixels_per_second": round(rate, 4),
                "images": [asdict(r) for r in self.results]}


class Progress(Protocol):
    """What the image pipeline reports as it goes (any object with these methods will do); here they do nothing."""

    def start_image(self, job: Job, tiles: int) -> None: ...

    def advance_tiles(self, n: int) -> None: ...

    def finish_image(self, result: ImageResult) -> None: ...


class NoProgress(Progress):
    """Reports nothing."""


# -- planning ---------------------------------------------------------------------------------------

def _folder_images(folder: Path, recursive: bool, exclude: Path | None) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if recursive and not d.startswith(".")
                         and (exclude is None or (here / d).resolve() != exclude))
        found.extend(here / f for f in sorted(files) if is_image_file(here / f))
    return found


def _file_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def plan_jobs(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, fmt: str = "png",
              recursive: bool = False) -> list[Job]:
    """One job per input image: files as given, folders' images (``recursive``: and sub-folders').
    Outputs go to ``out_dir`` keeping paths relative to each folder and the stems.

    Raises :class:`HRXError` before anything runs when two inputs would write the same output, when an
    output would overwrite an input, or when there is nothing to do."""
    if fmt not in FORMATS:
        raise HRXError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise HRXError(f"{out_dir}: output exists and is not a folder")
    suffix = FORMATS[fmt][1]
    exclude = out_dir.resolve()
    jobs: list[Job] = []
    for given in map(Path, inputs):
        if given.is_dir():
            for src in _folder_images(given, recursive, exclude):
                rel = src.relative_to(given)
                jobs.append(Job(src, out_dir / rel.parent / (rel.stem + suffix)))
        elif given.is_file():
            jobs.append(Job(given, out_dir / (given.stem + suffix)))
        else:
            jobs.append(Job(given, out_dir / (given.stem + suffix), "no such file or folder"))
    unique: dict[Path, Job] = {}
    for job in jobs:  # the same file named twice (or a file and its folder) runs once
        unique.setdefault(job.source.resolve(), job)
    jobs = list(unique.values())
    if not jobs:
        raise HRXError(f"no images found in {', '.join(map(str, inputs))} "
                       f"(looked for {', '.join(sorted(IMAGE_SUFFIXES))}{'' if recursive else '; --recursive for sub-folders'})")
    _check_outputs(jobs)
    return jobs


def check_inputs(jobs: Sequence[Job], out_dir: str | os.PathLike) -> None:
    """Fail before any model work when no input can be read, or the output folder cannot be made or
    written (a few unusable inputs among good ones fail one by one in the batch instead)."""
    bad = [j for j in jobs if j.error is not None]
    if bad and len(bad) == len(jobs):
        first = f"{bad[0].source}: {bad[0].error}"
        raise HRXError(first if len(bad) == 1 else f"none of the {len(bad)} inputs exists ({first}, ...)")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HRXError(f"{out_dir}: cannot create the output folder ({e.strerror or e})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise HRXError(f"{out_dir}: the output folder is not writable")


def _check_outputs(jobs: list[Job]) -> None:
    seen: dict[Path, Path] = {}
    sources = {p.resolve() for p in (j.source for j in jobs)}
    keys = {k for k in (_file_key(j.source) for j in jobs) if k is not None}
    for job in jobs:
        target = job.output.resolve()
        if target in seen:
            raise HRXError(f"{seen[target]} and {job.source} would both be written to {job.output}; "
                           "rename one or upscale them separately")
        seen[target] = job.source
        if target in sources or (_file_key(job.output) in keys):
            raise HRXError(f"{job.output}: refusing to write over an input file; choose another -o folder or --format")


# -- the batch --------------------------------------------------------------------------------------

class _OutputLocks:
    """The locks of the outputs one stream has in flight: each taken before its image is read (another run
    writing that output fails the image with :class:`~hrx.errors.OutputBusy`), let go once it is written
    or has failed, and every one left let go when the stream ends (after its threads)."""

    def __init__(self) -> None:
        self._held: dict[Path, OutputLock] = {}
        self._guard = threading.Lock()

    def take(self, output: Path) -> None:
        try:
            lock = hold_lock(lock_name(output), output)
        except OutputBusy:
            raise
        except OSError:  # no lock file can be made there: the write says why in its own words
            return
        with self._guard:
            self._held[output] = lock

    def release(self, output: Path) -> None:
        with self._guard:
            lock = self._held.pop(output, None)
        if lock is not None:
            lock.release()

    def __enter__(self) -> "_OutputLocks":
        return self

    def __exit__(self, *exc: object) -> None:
        for output in list(self._held):
            self.release(output)


def _decode(job: Job, options: BatchOptions, locks: _OutputLocks) -> Picture:
    if job.error:
        raise HRXError(f"{job.source}: {job.error}")
    locks.take(job.output)
    return read_image(job.source, options.max_pixels, options.warn)


def _encode(picture: Picture, job: Job, options: BatchOptions) -> None:
    try:
        write_image(job.output, picture, options.fmt, options.quality, options.run_id, options.png_level)
    except HRXError:
        raise
    except OSError as e:
        raise HRXError(f"{job.output}: cannot write ({e.strerror or e})") from e


def failure_line(where: Path, e: BaseException) -> str:
    """How a failed image or video is reported: an :class:`HRXError`'s own line (``FILE: `` before it if it
    does not name the file), else ``FILE: Type: message``."""
    if isinstance(e, HRXError):
        return str(e) if str(where) in str(e) else f"{where}: {e}"
    if isinstance(e, MemoryError):
        return f"{where}: out of memory"
    return f"{where}: {one_line(e)}"


def fail_result(result: ImageResult, where: Path, e: BaseException, options: BatchOptions) -> None:
    """Mark ``result`` failed by ``e``: an :class:`HRXError`'s own line (``FILE: `` before it if it does not
    name the file), else
    ``FILE: Type: message``; the type and the exit code it asks for are kept in the row."""
    result.status = "failed"
    result.reason = failure_line(where, e)
    result.error = type(e).__name__
    result.exit_code = e.exit_code if isinstance(e, HRXError) else 1
    if options.on_error is not None:
        options.on_error(e)


def run_batch(backend: Backend, jobs: Sequence[Job], spec: TileSpec, options: BatchOptions = BatchOptions(),
              progress: Progress | None = None) -> BatchReport:
    """Upscale every job; a failing image is recorded (``status="failed"``) and the batch goes on.

    Interrupting (Ctrl-C) lets the image being written finish or vanish, never a partial file; every
    image finished before it has gone to ``progress.finish_image``.
    Several backends (devices, CPU workers) sharing one queue: :func:`hrx.runtime.pool.run_pool`."""
    progress = progress or NoProgress()
    report = BatchReport(backend.name)
    started = time.perf_counter()
    record = lambda result: _finish(report, progress, result)  # noqa: E731
    todo = skip_existing(jobs, options, record)
    pending = iter(todo)
    run_stream(backend, lambda: next(pending, None), spec, options, progress, record)
    report.seconds = time.perf_counter() - started
    return report


def skip_existing(jobs: Sequence[Job], options: BatchOptions, record: Callable[[ImageResult], None]) -> list[Job]:
    """The jobs to run; with ``options.skip_existing``, those whose output exists are recorded as skipped."""
    todo: list[Job] = []
    for job in jobs:
        if options.skip_existing and job.output.exists():
            clear_stale_lock(job.output)
            record(ImageResult(str(job.source), str(job.output), "skipped", "output exists"))
        else:
            todo.append(job)
    return todo


def clear_stale_lock(output: Path) -> None:
    """Remove the lock file of a finished ``output`` that a run left when it was killed between writing the
    output and letting the lock go (nobody holds it); one held by another run stays."""
    if not lock_name(output).exists():
        return
    try:
        hold_lock(lock_name(output), output).release()
    except (OutputBusy, OSError):
        pass


def run_stream(backend: Backend, next_job: Callable[[], Job | None], spec: TileSpec, options: BatchOptions,
               progress: Progress, record: Callable[[ImageResult], None], worker: str = "") -> None:
    """Upscale jobs taken from ``next_job`` (``None``: no more) with ``backend`` until there are none left,
    decoding the next and encoding the previous on two threads; every result goes to ``record``.

    Any exception while reading, inferring or writing one image fails that image only (a ``failed`` row
    with the file, the exception's type and its message). :class:`BackendDown` also fails every job left
    at once (``attempted=False``). Only ``KeyboardInterrupt`` / ``SystemExit`` end the stream: the image
    being written is finished whole (or not at all) and recorded before they propagate. Each output is
    locked from the read of its image to the end of its write (:class:`_OutputLocks`)."""
    with _OutputLocks() as locks, ThreadPoolExecutor(1, thread_name_prefix="hrx-decode") as decoder, \
            ThreadPoolExecutor(1, thread_name_prefix="hrx-encode") as encoder:
        writing: tuple[Future, ImageResult] | None = None
        try:
            job = next_job()
            next_picture: Future | None = decoder.submit(_decode, job, options, locks) if job is not None else None
            while job is not None:
                following = next_job()
                current, next_picture = next_picture, (decoder.submit(_decode, following, options, locks)
                                                       if following is not None else None)
                result = ImageResult(str(job.source), str(job.output), "failed", worker=worker)
                t0 = time.perf_counter()
                try:
                    picture, current = current.result(), None  # the future must not keep the picture alive
                    upscaled = _upscale_one(backend, picture, spec, options, job, result, progress)
                    del picture
                except Exception as e:  # noqa: BLE001 - every image its own fate
                    fail_result(result, job.source, e, options)
                    locks.release(job.output)
                    record(result)
                    if isinstance(e, BackendDown):
                        _fail_the_rest(following, next_job, e, worker, record)
                        break
                    job = following
                    continue
                result.seconds = time.perf_counter() - t0
                if writing is not None:
                    previous, writing = writing, None
                    _collect(record, *previous, options, locks)
                writing = (encoder.submit(_encode, upscaled, job, options), result)
                del upscaled
                job = following
        finally:  # normal end, or an interrupt: the write in flight finishes (or vanishes) and is recorded
            if writing is not None:
                _collect(record, *writing, options, locks)


def _fail_the_rest(job: Job | None, next_job: Callable[[], Job | None], e: BackendDown, worker: str,
                   record: Callable[[ImageResult], None]) -> None:
    while job is not None:
        record(ImageResult(str(job.source), str(job.output), "failed", f"{job.source}: not run ({e})", worker=worker,
                           error=type(e).__name__, exit_code=e.exit_code, attempted=False))
        job = next_job()


def _upscale_one(backend: Backend, picture: Picture, spec: TileSpec, options: BatchOptions, job: Job,
                 result: ImageResult, progress: Progress) -> Picture:
    info = backend.info
    size = output_size(picture.width, picture.height, info.scale, options)
    result.width, result.height = picture.width, picture.height
    result.bits = 8 if options.fmt in EIGHT_BIT_FORMATS else picture.bits
    if picture.bits == 16 and result.bits == 8 and options.warn is not None:
        options.warn(f"16-bit inputs are written with 8 bits per channel: --format {options.fmt} holds no more "
                     "(png or tiff keep 16)")
    # an upscaling model asked for an output no larger than its input would only be undone by the resize;
    # an x1 (restoration) model always runs
    if info.scale > 1 and size[0] <= picture.width and size[1] <= picture.height:
        progress.start_image(job, 0)
        upscaled, result.resample = resample_picture(picture, size)
    else:
        upscaled = _run_model(backend, picture, spec, options, job, result, progress)
        result.model_scale = info.scale
        upscaled, result.resample = resample_picture(upscaled, size)
    result.out_width, result.out_height = upscaled.width, upscaled.height
    result.scale = round(upscaled.width / picture.width, 6)
    return quantize(upscaled, options.fmt)  # the float image dies here, before the writer thread encodes


def _run_model(backend: Backend, picture: Picture, spec: TileSpec, options: BatchOptions, job: Job,
               result: ImageResult, progress: Progress) -> Picture:
    info = backend.info
    # a backend that takes any size (PyTorch) runs an image that fits in one tile whole, unpadded to the tile
    whole = backend.any_tile and max(picture.height, picture.width) <= spec.tile
    passes = model_passes(picture, info.in_channels, options.alpha)
    result.tiles = passes * (1 if whole else tile_count(picture.height, picture.width, spec))
    progress.start_image(job, result.tiles)

    def run(x: np.ndarray) -> np.ndarray:
        if whole:
            out = upscale_whole(x, backend.infer, spec)
            progress.advance_tiles(1)
            return out
        return upscale_tiled(x, backend.infer, spec, progress.advance_tiles, backend.infer_many)

    return upscale_picture(picture, run, info.in_channels, info.scale, options.alpha)


def _collect(record: Callable[[ImageResult], None], future: Future, result: ImageResult,
             options: BatchOptions, locks: _OutputLocks) -> None:
    t0 = time.perf_counter()
    try:
        future.result()
        result.status = "done"
    except Exception as e:  # noqa: BLE001 - a failed write fails this image only
        fail_result(result, Path(result.output), e, options)
    finally:
        locks.release(Path(result.output))
    result.seconds += time.perf_counter() - t0
    record(result)


def _finish(report: BatchReport, progress: Progress, result: ImageResult) -> None:
    report.results.append(result)
    progress.finish_image(result)
