"""``hrx upscale ... --ray [ADDRESS]``: the same job as ``hrx upscale`` on a Ray cluster (Ray Data).

* The driver plans the jobs exactly as a local run (``plan_jobs``, output paths, ``--skip-existing``) and
  sends Ray Data only paths (``from_items``, one block per image so a lost block is one image).
* ``map_batches`` with :class:`UpscaleActor`, a callable class: each actor opens its backend once, from the
  request the driver shares (the model file must be readable at the same path on every node: a shared
  filesystem, as for the images), and runs the ordinary :func:`~hrx.runtime.pipeline.run_batch` on each
  image, so decoding (16-bit, alpha, ICC, EXIF), tiling and HRX's atomic writes are the local ones.
  ``compute=ActorPoolStrategy(size=actors)``; ``num_gpus=1`` per actor when the cluster has GPUs.
* A bad image is a ``failed`` row with its reason (``run_batch`` catches it), never a failed Ray task.
  An actor that dies is restarted by Ray and its images are retried; outputs are renamed into place
  whole, so none is ever half-written. Temporary files carry the run's id (``.NAME.RUNID.XXXXXXXX.tmp``);
  at the end, once no actor of the run is inside a call, the ones a killed actor left are removed, and only
  those: another run writing into the same folder keeps its own. When the job succeeded every call has
  returned; after a failed job Ray Data leaves its actors alive for a while, so the cleanup waits up to
  ``stop_timeout`` seconds for them to stop and is skipped (temporary files may stay) if they do not.
* A Ray job that fails for good (an actor that cannot open the model, a task that keeps failing) still
  returns a report: the rows that came back, and every other image as a ``failed`` row (``attempted``
  false) with the job's error. If the driver dies, re-running with ``--skip-existing`` does the rest.
* Defaults leave a core to Ray Data's readers: at most N-1 CPU actors on N CPUs (a pool that takes every
  core can stall Ray Data for a long time), one ONNX Runtime thread per actor CPU.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from hrx.errors import HRXError, MissingDependencyError, one_line
from hrx.interface import ModelInfo
from hrx.paths import ONNX_SUFFIXES, new_run_id, remove_temporaries
from hrx.runtime.pipeline import BatchOptions, BatchReport, ImageResult, Job, NoProgress, Progress, run_batch

if TYPE_CHECKING:
    from hrx.runtime.factory import BackendRequest


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # None / "": start a local cluster for the run (or use one ray.init made)
    actors: int = 0  # 0: CPU: N-1 of the cluster's N CPUs (at least 1); GPU: one per GPU
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 1.0  # used only when the cluster has GPUs
    stop_timeout: float = 10.0  # after a failed job: how long to wait for its actors to stop before cleaning up


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(f"--ray needs Ray Data ({e}); pip install 'hrx[ray]'") from None
    return ray


def connect(address: str | None) -> Any:
    """Join the cluster at ``address``, or start a local one (or reuse the one this process started)."""
    ray = _ray()
    for name in ("ray", "ray.data"):  # the CLI prints its own lines; Ray's INFO chatter goes to its log files
        logging.getLogger(name).setLevel(logging.ERROR)
    if ray.is_initialized():
        return ray
    try:
        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, ignore_reinit_error=True)
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, ... from ray.init
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise HRXError(f"cannot {'connect to the Ray cluster at ' + address if address else 'start a local Ray cluster'}"
                       f" ({first[:300]})") from None
    return ray


def exported_model_info(engine: Path) -> ModelInfo:
    """The metadata of an exported model (an ``.onnx`` file's, or a TensorRT engine's record), read without
    opening the model: what the driver needs to plan, while the actors open it."""
    if engine.suffix.lower() in ONNX_SUFFIXES:
        return ModelInfo.from_onnx(engine)
    from hrx.runtime.trt.cache import read_record

    return read_record(engine).info()


def default_actors(cpus: float, gpus: float, options: RayOptions, todo: int) -> tuple[int, float, float]:
    """``(actors, cpus per actor, gpus per actor)``: one per GPU, else N-1 CPU actors (never every core)."""
    if gpus >= 1:
        actors = options.actors or int(gpus // options.gpus_per_actor)
        return max(1, min(actors, todo)), min(options.cpus_per_actor, 1.0), options.gpus_per_actor
    per = options.cpus_per_actor
    limit = max(1, int((cpus - 1) // per)) if cpus > 1 else 1
    if cpus <= 1:  # one CPU: a fraction of it, so the readers still get scheduled
        per = min(per, 0.5)
    actors = min(options.actors or limit, limit)
    return max(1, min(actors, todo)), per, 0.0


class UpscaleActor:
    """Ray Data callable class: opens the backend once, then upscales one image per row."""

    def __init__(self, request, overlap: int | None, merge: str, options: BatchOptions) -> None:
        from hrx.runtime.factory import open_backend
        from hrx.runtime.images import configure_pillow

        configure_pillow(options.max_pixels)
        self.backend = open_backend(request)
        self.options = options
        from hrx.runtime.tiling import TileSpec

        self.spec = TileSpec.from_info(self.backend.info, overlap, merge)
        self.worker = f"ray:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows: list[dict] = []
        for index, source, output, error in zip(batch["index"], batch["source"], batch["output"], batch["error"]):
            job = Job(Path(str(source)), Path(str(output)), str(error) or None)
            report = run_batch(self.backend, [job], self.spec, self.options)
            row = dataclasses.asdict(report.results[0])
            row.update(index=int(index), worker=self.worker)
            rows.append(row)
        return {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]} if rows else {}


def _job_error(e: BaseException) -> str:
    """The user-code error inside a Ray error (``Type: message``, the last such line of the traceback text
    Ray carries), else its first line; at most 300 characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    found = re.findall(r"^(\w+(?:Error|Exception): .+)$", text, flags=re.MULTILINE)
    if found:
        return found[-1].strip()[:300]
    return one_line(e)


def _result(row: dict) -> ImageResult:
    names = {f.name for f in dataclasses.fields(ImageResult)}
    values = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items() if k in names}
    return ImageResult(**values)


def actors_stopped(ray: ModuleType, timeout: float, class_name: str = "UpscaleActor") -> bool:
    """Whether every actor of this job whose class is ``class_name`` has stopped (dead, after a kill or the
    end of the job), waiting up to ``timeout`` seconds; ``False`` when it cannot be told (no actor table).
    Ray Data names its actors ``MapWorker(MapBatches(CLASS))``."""
    try:
        from ray._private.state import actors as actor_table

        job = ray.get_runtime_context().get_job_id()
    except Exception:  # noqa: BLE001 - an older / newer Ray without this table
        return False
    deadline = time.monotonic() + timeout
    while True:
        try:
            live = [a for a in actor_table().values() if class_name in str(a.get("ActorClassName", ""))
                    and str(a.get("JobID", job)) in (job, "") and a.get("State") != "DEAD"]
        except Exception:  # noqa: BLE001
            return False
        if not live:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def run_batch_ray(request: BackendRequest, jobs: Sequence[Job], overlap: int | None, merge: str, options: BatchOptions,
                  ray_options: RayOptions = RayOptions(), progress: Progress | None = None,
                  actor: type = UpscaleActor) -> BatchReport:
    """Upscale ``jobs`` on Ray Data actors (``actor``: :class:`UpscaleActor` or a subclass); the report lists
    every image in the planned order, also when the Ray job fails part way (see the module doc)."""
    progress = progress or NoProgress()
    options = dataclasses.replace(options, run_id=options.run_id or new_run_id())
    started = time.perf_counter()
    results: dict[int, ImageResult] = {}
    todo: list[tuple[int, Job]] = []
    for k, job in enumerate(jobs):
        if options.skip_existing and job.output.exists():
            results[k] = ImageResult(str(job.source), str(job.output), "skipped", "output exists")
            progress.finish_image(results[k])
        else:
            todo.append((k, job))
    backend_name = "ray"
    if todo:
        ray = connect(ray_options.address)
        from ray.data import ActorPoolStrategy, DataContext

        resources = ray.cluster_resources()
        actors, cpus, gpus = default_actors(resources.get("CPU", 1.0), resources.get("GPU", 0.0), ray_options, len(todo))
        request = dataclasses.replace(request, log=None, threads=max(1, int(cpus)))
        actor_options = dataclasses.replace(options, warn=None, on_error=None)  # callables of this process
        context = DataContext.get_current()
        context.enable_progress_bars = False
        context.max_errored_blocks = 0
        items = [{"index": k, "source": str(j.source), "output": str(j.output), "error": j.error or ""}
                 for k, j in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(actor, batch_size=1, compute=ActorPoolStrategy(size=actors),
                            fn_constructor_kwargs=dict(request=request, overlap=overlap, merge=merge,
                                                       options=actor_options),
                            num_cpus=cpus, num_gpus=gpus or None)  # Ray Data restarts actors and retries by default
        backend_name = f"ray ({actors} actor{'s' * (actors != 1)}, {cpus:g} CPU{f', {gpus:g} GPU' if gpus else ''} each)"
        failure: str | None = None
        try:
            for row in ds.iter_rows():
                result = _result(row)
                results[int(row["index"])] = result
                progress.finish_image(result)
        except Exception as e:  # noqa: BLE001 - the job failed for good (an actor that cannot open the model, ...)
            failure = _job_error(e)
        # every row back: no actor is inside a write; a failed job: wait until its actors have stopped
        if failure is None or actors_stopped(ray, ray_options.stop_timeout, actor.__name__):
            remove_temporaries([j.output for _, j in todo], options.run_id)
        if failure is None and len(results) < len(jobs):
            failure = f"it returned {len(results)} of {len(jobs)} images"
        for k, job in todo:
            if k not in results:
                results[k] = ImageResult(str(job.source), str(job.output), "failed",
                                         f"{job.source}: not run (the Ray job failed: {failure})", error="RayJobError",
                                         exit_code=1, attempted=False)
                progress.finish_image(results[k])
    report = BatchReport(backend_name, [results[k] for k in sorted(results)])
    report.seconds = time.perf_counter() - started
    return report
