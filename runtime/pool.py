"""Several backends working through one queue of images: one per CUDA device (``--devices 0,1``) or
several CPU sessions (``--workers K``), each on its own thread, writing one report.

Every worker is a :func:`hrx.runtime.pipeline.run_stream`: it takes the next job from the shared queue,
so a fast device takes more images than a slow one and no image is taken twice. Backends are opened on
the calling thread before any image work, so a device that cannot start fails the command at once.
ONNX Runtime, TensorRT and PyTorch release the GIL while they compute, so threads are enough.

CPU: ``threads`` intra-op threads in all (default: every core this process may use), split evenly
between ``workers`` sessions: each gets ``threads // workers`` (at least one; a remainder stays unused),
so every session computes with the same thread count (:class:`SharedSessions`). Several CPU sessions are one :class:`SharedSessions` backend: every image
stream hands its tile batches to whichever session is free, so the sessions share the TILES of one
large image as well as the images of a folder (a graph of many small ops keeps k one-thread sessions
busier than one k-thread session: benchmarks/bench_workers.py). ``hrx upscale`` runs OpenVINO (and ONNX Runtime
CPU) with one single-thread session per core by default (:func:`auto_workers`).
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

from hrx.errors import HRXError
from hrx.interface import Backend
from hrx.runtime.pipeline import (BatchOptions, BatchReport, ImageResult, Job, NoProgress, Progress, run_stream,
                                  skip_existing)
from hrx.runtime.tiling import TileSpec

if TYPE_CHECKING:
    from hrx.interface import ModelInfo


@dataclass(frozen=True)
class Worker:
    """One slot of the pool: ``device`` is a CUDA index (``kind="cuda"``) or the CPU worker's number."""

    kind: str  # "cuda" or "cpu"
    device: int
    threads: int = 0  # CPU: intra-op threads of this worker's session (0: the backend's default)

    @property
    def label(self) -> str:
        """``kind:device``, as reports name the worker."""
        return f"{self.kind}:{self.device}"


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_devices(text: str) -> list[int]:
    """``"0,1"`` -> ``[0, 1]``; raises :class:`HRXError` on anything else (negative, repeated, empty)."""
    try:
        devices = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise HRXError(f"--devices {text!r}: expected CUDA device numbers separated by commas, e.g. 0,1") from None
    if not devices or any(d < 0 for d in devices) or len(set(devices)) != len(devices):
        raise HRXError(f"--devices {text!r}: expected distinct CUDA device numbers >= 0, e.g. 0,1")
    return devices


def plan_workers(devices: Sequence[int] | None, workers: int = 1, threads: int = 0) -> list[Worker]:
    """The pool for the CLI flags: one worker per CUDA device when ``devices`` is given, else ``workers``
    CPU workers with ``threads // workers`` intra-op threads each (``threads`` 0: all cores; at least one
    each). The split is even, leaving a remainder unused, because :class:`SharedSessions` hands any batch
    to any free session: with unequal thread counts a tile's result could depend on which session ran it
    (a kernel may split its work, and round, by thread count)."""
    if workers < 1:
        raise HRXError(f"--workers must be >= 1, not {workers}")
    if devices:
        if workers != 1:
            raise HRXError("--workers applies to the CPU; with --device/--devices there is one worker per device")
        return [Worker("cuda", d) for d in devices]
    share = max(1, (threads or available_cores()) // workers)
    return [Worker("cpu", k, share) for k in range(workers)]


def runs_cpu_sessions(engine: str | os.PathLike | None, model: str | None, backend: str) -> bool:
    """Whether ``hrx upscale`` with these flags will run an ``.onnx`` file (or the bundled model) on the CPU
    with OpenVINO or ONNX Runtime (``--backend openvino`` / ``onnxrt-cpu``, or ``auto`` with no CUDA
    provider), before opening anything."""
    if model is not None or backend not in ("auto", "onnxrt-cpu", "openvino"):
        return False
    if engine is not None and not str(engine).lower().endswith(".onnx"):
        return False
    if backend in ("onnxrt-cpu", "openvino"):
        return True
    from hrx.runtime.onnxrt import cuda_available

    return not cuda_available()


def batches_in(image: str | os.PathLike, info: ModelInfo, overlap: int | None = None) -> int | None:
    """Tile batches the model of ``info`` (:class:`hrx.interface.ModelInfo`) runs on ``image``, from its
    header only; ``None`` when it cannot be read (the pipeline reports that image later)."""
    import math

    from PIL import Image

    from hrx.runtime.tiling import tile_count

    try:
        with Image.open(image) as im:
            width, height = im.size
        spec = TileSpec.from_info(info, overlap)
    except (OSError, ValueError, HRXError, Image.DecompressionBombError):
        return None
    return math.ceil(tile_count(height, width, spec) / max(1, info.batch))


def auto_workers(cpu_sessions: bool, threads: int = 0) -> int:
    """``--workers`` when the user gave none: one single-thread session per core (``threads`` cores, 0: all)
    for ONNX Runtime CPU, where it measured faster than one session with every core on a folder and on
    one large image alike (benchmarks/bench_workers.py), and for OpenVINO (one stream per core in its
    streams mode); 1 for every other backend (GPUs, PyTorch, whose CPU threads are process-wide)."""
    return max(1, threads or available_cores()) if cpu_sessions else 1


def workers_for(jobs: Sequence[Job], cpu_sessions: bool, threads: int = 0, onnx: Path | None = None,
                overlap: int | None = None) -> int:
    """:func:`auto_workers` for a run of ``jobs``; but one image of fewer tile batches of the model file
    ``onnx`` than that gets as many sessions as it has batches (one small image: one session with every core)."""
    workers = auto_workers(cpu_sessions, threads)
    if workers > 1 and len(jobs) == 1 and onnx is not None and onnx.is_file():
        from hrx.interface import ModelInfo

        try:
            batches = batches_in(jobs[0].source, ModelInfo.from_onnx(onnx), overlap)
        except HRXError:  # not an HRX export: opening it fails later with the full message
            batches = None
        if batches is not None:
            workers = max(1, min(workers, batches))
    return workers


class SharedSessions(Backend):
    """Several sessions of one model (CPU workers) behind one :class:`Backend`: :meth:`infer` runs on the
    next free session, :meth:`infer_many` keeps up to two batches per session in flight and returns the
    results in order. Every session runs the same graph with the same thread count, so which session ran
    a batch does not change its result. Closing it closes the sessions."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        if not backends:
            raise ValueError("SharedSessions needs at least one backend")
        self.backends = list(backends)
        first = self.backends[0]
        self.name, self.info, self.any_tile = first.name, first.info, first.any_tile
        self._idle: queue.SimpleQueue[Backend] = queue.SimpleQueue()
        for b in self.backends:
            self._idle.put(b)
        self._runner = ThreadPoolExecutor(len(self.backends), thread_name_prefix="hrx-session")

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        """Run one batch on the next idle session."""
        backend = self._idle.get()
        try:
            return backend.infer(tiles)
        finally:
            self._idle.put(backend)

    def infer_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Results of ``batches`` in order, up to two per session in flight."""
        ahead = 2 * len(self.backends)
        pending: deque[Future] = deque()
        try:
            for batch in batches:
                pending.append(self._runner.submit(self.infer, batch))
                if len(pending) >= ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # stopped early: drop what has not started (what runs finishes on its session)
            for f in pending:
                f.cancel()

    def stop(self) -> None:
        """End the runner threads (waiting for the batches running); the sessions stay open."""
        self._runner.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Stop the threads and close every session."""
        self.stop()
        for b in self.backends:
            b.close()


def bind_cuda_device(device: int) -> None:
    """Make ``device`` the current CUDA device of the calling thread (TensorRT and PyTorch use it)."""
    try:
        import torch
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(device)


class _LockedProgress:
    """Progress calls from several workers, one at a time."""

    def __init__(self, inner: Progress) -> None:
        self.inner, self.lock = inner, threading.Lock()

    def start_image(self, job, tiles: int) -> None:
        with self.lock:
            self.inner.start_image(job, tiles)

    def advance_tiles(self, n: int) -> None:
        with self.lock:
            self.inner.advance_tiles(n)

    def finish_image(self, result: ImageResult) -> None:
        with self.lock:
            self.inner.finish_image(result)


def open_workers(request: "BackendRequest", workers: Sequence[Worker]) -> list[Backend]:  # noqa: F821
    """One backend per worker for a resolved ``request`` (:func:`hrx.runtime.factory.resolve_request`):
    CPU workers through :func:`hrx.runtime.factory.open_cpu_sessions` (OpenVINO: one compiled model with a
    stream per worker by default), CUDA workers one per device."""
    import dataclasses

    from hrx.runtime.factory import open_backend, open_cpu_sessions

    if all(w.kind == "cpu" for w in workers):
        return open_cpu_sessions(request, [w.threads for w in workers])
    return open_pool(lambda w: open_backend(dataclasses.replace(
        request, device=w.device if w.kind == "cuda" else None, threads=w.threads)), workers)


def open_pool(open_one: Callable[[Worker], Backend], workers: Sequence[Worker]) -> list[Backend]:
    """Open one backend per worker, in order, on this thread; closes the opened ones if one fails."""
    backends: list[Backend] = []
    try:
        for w in workers:
            if w.kind == "cuda":
                bind_cuda_device(w.device)
            backends.append(open_one(w))
    except BaseException:
        for b in backends:
            b.close()
        raise
    return backends


def run_pool(backends: Sequence[Backend], workers: Sequence[Worker], jobs: Sequence[Job],
             spec_for: Callable[[Backend], TileSpec], options: BatchOptions = BatchOptions(),
             progress: Progress | None = None, share_tiles: bool = True) -> BatchReport:
    """Upscale ``jobs`` with ``backends[k]`` on thread k (``workers[k]`` names it), all taking jobs from
    one queue; one report, results in the jobs' order, each with the worker that ran it. CPU workers
    share their sessions (:class:`SharedSessions`): thread k streams images, and the tile batches of
    every image go to whichever session is free (``share_tiles=False``: each thread keeps its own session,
    images are shared but not tiles; for measurements).

    Every exception while reading, inferring or writing an image fails that image only (a ``failed`` row);
    the others go on. Only an interrupt (Ctrl-C, ``SystemExit``) stops every worker after its current
    image, and is raised here; every image finished before it has gone to ``progress.finish_image``."""
    if len(backends) != len(workers) or not backends:
        raise ValueError("run_pool needs one backend per worker, and at least one")
    progress = _LockedProgress(progress or NoProgress())
    names = sorted({b.name for b in backends})
    label = names[0] if len(names) == 1 else "+".join(names)
    report = BatchReport(label if len(backends) == 1 else f"{label} x{len(backends)} "
                         f"({', '.join(w.label for w in workers)})")
    started = time.perf_counter()
    lock = threading.Lock()
    results: list[ImageResult] = []

    def record(result: ImageResult) -> None:
        with lock:
            results.append(result)
        progress.finish_image(result)

    todo = skip_existing(jobs, options, record)
    pending = iter(todo)
    stop = threading.Event()
    cpu = len(backends) > 1 and all(w.kind == "cpu" for w in workers)
    shared = SharedSessions(backends) if share_tiles and cpu else None
    runners: Sequence = [shared] * len(backends) if shared is not None else backends
    failures: list[BaseException] = []

    def next_job() -> Job | None:
        if stop.is_set():
            return None
        with lock:
            return next(pending, None)

    def work(backend: Backend, worker: Worker) -> None:
        try:
            if worker.kind == "cuda":
                bind_cuda_device(worker.device)
            run_stream(backend, next_job, spec_for(backend), options, progress, record, worker.label)
        except BaseException as e:  # noqa: BLE001 - an interrupt: handed to the calling thread below
            stop.set()
            with lock:
                failures.append(e)

    threads = [threading.Thread(target=work, args=(b, w), name=f"hrx-{w.label}", daemon=True)
               for b, w in zip(runners, workers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.2)  # a short join keeps Ctrl-C deliverable to this thread
    except BaseException:
        stop.set()
        for t in threads:
            t.join()
        raise
    finally:
        if shared is not None:  # its runner threads; the sessions themselves are the caller's to close
            shared.stop()
    if failures:
        raise failures[0]
    order = {str(j.source): k for k, j in enumerate(jobs)}
    report.results = sorted(results, key=lambda r: order.get(r.source, len(order)))
    report.seconds = time.perf_counter() - started
    return report
