"""hrx upscale --ray on a cluster of several nodes on this machine (``ray.cluster_utils.Cluster``: a head
with no CPUs, so every actor runs on one of two 1-CPU worker nodes): the outputs equal a local run's
byte for byte; a worker node killed while one of its actors is inside an image: Ray restarts the actor on
the other node and retries the image, and every image comes back exactly once, whole, with no temporary
or lock file left. (One node, actors killed mid-write, --skip-existing: tests/test_ray.py.)"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hrx.runtime.distributed import RayOptions, UpscaleActor, run_batch_ray
from hrx.runtime.factory import BackendRequest, open_backend
from hrx.runtime.pipeline import BatchOptions, ImageResult, plan_jobs, run_batch
from hrx.runtime.tiling import TileSpec
from runtime_support import write_toy

ray = pytest.importorskip("ray", reason="Ray (pip install 'hrx[ray]')")

ACTORS = RayOptions(actors=2, cpus_per_actor=0.5)  # 2 CPUs in the cluster: N-1 = 1 CPU, two half-CPU actors


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        workers = [nodes.add_node(num_cpus=1) for _ in range(2)]
        ray.init(address=nodes.address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        nodes.wait_for_nodes()
        yield nodes, workers
    finally:
        ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> dict:
    """Eight small images and a corrupt file, the toy ONNX model, and the plain local run's outputs."""
    tmp = tmp_path_factory.mktemp("cluster")
    images = tmp / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    for k in range(8):
        Image.fromarray(rng.integers(0, 256, (20 + k, 30, 3), dtype=np.uint8)).save(images / f"p{k}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    request = BackendRequest(engine=write_toy(tmp / "toy.onnx", tile=16, batch=2), backend="onnxrt-cpu", threads=1)
    backend = open_backend(request)
    try:
        report = run_batch(backend, plan_jobs([images], tmp / "local"), TileSpec.from_info(backend.info, None, "blend"))
    finally:
        backend.close()
    assert [r.status for r in report.results].count("done") == 8
    return {"images": images, "request": request, "outputs": _outputs(tmp / "local")}


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _statuses(results: list[ImageResult]) -> dict[str, str]:
    return {Path(r.source).name: r.status for r in results}


@pytest.mark.slow
def test_a_multi_node_cluster_writes_what_a_local_run_writes(cluster, local, tmp_path):
    out = tmp_path / "ray"
    jobs = plan_jobs([local["images"]], out)
    report = run_batch_ray(local["request"], jobs, None, "blend", BatchOptions(), ACTORS)
    assert report.backend == "ray (2 actors, 0.5 CPU each)"
    assert [r.source for r in report.results] == [str(j.source) for j in jobs]
    assert _statuses(report.results) == {**{f"p{k}.png": "done" for k in range(8)}, "broken.png": "failed"}
    assert _outputs(out) == local["outputs"]  # byte for byte; no temporary or lock file left


def _slow_actor(marks: str):
    """An UpscaleActor that records, before each image, the node it runs on (``marks/IMAGE.NODE``), then
    takes half a second: long enough for the test to kill that node while the image is in flight. Made
    in a function so that Ray ships the class by value."""

    class Slow(UpscaleActor):
        def __call__(self, batch):
            node = ray.get_runtime_context().get_node_id()
            (Path(marks) / f"{Path(str(batch['source'][0])).name}.{node}").touch()
            time.sleep(0.5)
            return super().__call__(batch)

    return Slow


@pytest.mark.slow
def test_a_worker_node_killed_mid_batch_loses_and_doubles_nothing(cluster, local, tmp_path):
    nodes, workers = cluster
    out, marks = tmp_path / "ray", tmp_path / "marks"
    marks.mkdir()
    jobs = plan_jobs([local["images"]], out)
    reported: list[ImageResult] = []

    class Rows:
        def finish_image(self, result: ImageResult) -> None:
            reported.append(result)

    done: dict = {}
    run = threading.Thread(target=lambda: done.update(report=run_batch_ray(
        local["request"], jobs, None, "blend", BatchOptions(), ACTORS, Rows(), actor=_slow_actor(str(marks)))))
    run.start()
    deadline = time.monotonic() + 120
    while not list(marks.iterdir()):  # an actor is inside its first image
        assert run.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    first = sorted(marks.iterdir(), key=lambda p: p.stat().st_mtime_ns)[0]
    image, node_id = first.name.rsplit(".", 1)
    victim = next(w for w in workers if w.node_id == node_id)
    nodes.remove_node(victim)  # the node and every process on it die, the image in flight with them
    run.join(timeout=180)
    assert not run.is_alive()
    report = done["report"]
    assert [r.source for r in report.results] == [str(j.source) for j in jobs]  # every image, once, in order
    assert sorted(r.source for r in reported) == sorted(str(j.source) for j in jobs)  # reported once each
    assert _statuses(report.results) == {**{f"p{k}.png": "done" for k in range(8)}, "broken.png": "failed"}
    retried = {p.name.rsplit(".", 1)[1] for p in marks.iterdir() if p.name.rsplit(".", 1)[0] == image}
    assert node_id in retried and len(retried) == 2, retried  # the image in flight ran again on the other node
    assert _outputs(out) == local["outputs"]  # whole and identical; no temporary or lock file left
