"""``hrx upscale clip.mkv --ray``: the segments of a video as the unit of work across Ray Data actors.

The driver plans the video exactly as a local run (:func:`hrx.runtime.video.begin_video`: the same
segments, the same work folder, finished segments of an earlier run kept) and sends Ray Data only
segment numbers. Each actor opens the backend once and runs the ordinary
:func:`~hrx.runtime.video.run_segment` on each (decode, model, encode, atomic rename into the work
folder, which must be on a filesystem every node can read and write, like the video itself). The
driver then joins the segments as a local run does, so the output equals the local run's.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hrx.errors import HRXError
from hrx.runtime.distributed import RayOptions, connect, default_actors
from hrx.runtime.tiling import TileSpec
from hrx.runtime.video import (VideoOptions, VideoPlan, VideoResult, begin_video, finish_video, run_segment,
                              video_lock)

if TYPE_CHECKING:
    from hrx.interface import ModelInfo
    from hrx.runtime.factory import BackendRequest


class SegmentActor:
    """Ray Data callable class: opens the backend once, then upscales one segment per row."""

    def __init__(self, request: BackendRequest, spec: TileSpec, plan: VideoPlan, work: str, options: VideoOptions) -> None:
        from hrx.runtime.factory import open_backend

        self.backend = open_backend(request)
        self.spec, self.plan, self.work, self.options = spec, plan, Path(work), options

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        indices, lost = [], []
        for index in batch["index"]:
            segment = self.plan.segments[int(index)]
            lost.append(run_segment(self.backend, self.spec, self.plan, segment, self.work, self.options))
            indices.append(int(index))
        return {"index": np.array(indices, dtype=np.int64), "lost": np.array(lost, dtype=np.int64)}


def upscale_video_ray(request: BackendRequest, info: ModelInfo, spec: TileSpec, source: Path, output: Path, options: VideoOptions,
                      ray_options: RayOptions = RayOptions(), model_id: str = "") -> VideoResult:
    """Upscale one video with its segments spread over Ray Data actors; resumes like a local run. This
    process holds the output's lock (:func:`~hrx.runtime.video.video_lock`) until the join."""
    with video_lock(output):
        return _upscale_video_ray(request, info, spec, source, output, options, ray_options, model_id)


def _upscale_video_ray(request, info, spec: TileSpec, source: Path, output: Path, options: VideoOptions,
                       ray_options: RayOptions, model_id: str) -> VideoResult:
    run = begin_video(info, spec, source, output, options, model_id)
    todo = run.todo()
    if todo:
        ray = connect(ray_options.address)
        from ray.data import ActorPoolStrategy, DataContext

        resources = ray.cluster_resources()
        actors, cpus, gpus = default_actors(resources.get("CPU", 1.0), resources.get("GPU", 0.0), ray_options,
                                            len(todo))
        request = dataclasses.replace(request, log=None, threads=max(1, int(cpus)))
        remote_options = dataclasses.replace(options, warn=None, resize=dataclasses.replace(options.resize, warn=None))
        context = DataContext.get_current()
        context.enable_progress_bars = False
        context.max_errored_blocks = 0
        ds = ray.data.from_items([{"index": s.index} for s in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(SegmentActor, batch_size=1, compute=ActorPoolStrategy(size=actors),
                            fn_constructor_kwargs=dict(request=request, spec=spec, plan=run.plan, work=str(run.work),
                                                       options=remote_options),
                            num_cpus=cpus, num_gpus=gpus or None)
        try:
            for row in ds.iter_rows():
                run.record(run.plan.segments[int(row["index"])], int(row["lost"]))
        except Exception as e:  # noqa: BLE001 - a segment that failed for good: the actor's error, one line
            lines = [line for line in str(e).strip().splitlines() if line.strip()]
            hrx_line = next((line for line in reversed(lines) if "HRXError" in line), lines[-1] if lines else "")
            reason = hrx_line.split("HRXError:", 1)[-1].strip() or type(e).__name__
            raise HRXError(f"{source}: the Ray job failed: {reason[:300]}") from None
    return finish_video(run, options)
