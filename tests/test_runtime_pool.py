"""Worker pool: several backends (fake CUDA devices, CPU sessions) sharing one queue, one report."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import hrx.runtime.pipeline as pipeline
from hrx.cli.main import app
from hrx.errors import HRXError
from hrx.interface import Backend, ModelInfo
from hrx.runtime.pipeline import plan_jobs, run_batch
from hrx.runtime.pool import (SharedSessions, Worker, auto_workers, batches_in, open_pool, parse_devices, plan_workers, run_pool,
                              runs_cpu_sessions)
from hrx.runtime.tiling import TileSpec, upscale_tiled
from runtime_support import write_toy

RNG = np.random.default_rng(0)


class FakeDeviceBackend(Backend):
    """A stand-in for one CUDA device: a fixed per-channel x2 model (not nearest: outputs differ by input)
    whose first call waits until every device has started an image, so each one is sure to get work."""

    name = "fake-cuda"

    def __init__(self, device: int, started: threading.Barrier) -> None:
        self.device, self.started, self.first = device, started, True
        self.info = ModelInfo("fake", 2, 3, 3, 8, 2, 4, 4)
        self.tiles = 0

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        if self.first:
            self.first = False
            self.started.wait(timeout=30)
        self.tiles += len(tiles)
        up = tiles.repeat(2, axis=2).repeat(2, axis=3)
        return np.sqrt(up) * np.array([1.0, 0.9, 0.8], np.float32)[None, :, None, None]

    def close(self) -> None:
        pass


def _spec(backend) -> TileSpec:
    i = backend.info
    return TileSpec(i.tile, i.tile_overlap, i.scale, i.size_multiple, i.batch, "blend")


def _folder(root, n=9):
    root.mkdir(parents=True)
    for k in range(n):
        Image.fromarray(RNG.integers(0, 256, (12 + k, 20, 3), dtype=np.uint8)).save(root / f"img{k}.png")
    return root


def test_two_devices_split_the_work_and_write_each_image_once(tmp_path, monkeypatch):
    src = _folder(tmp_path / "in")
    writes: dict[str, int] = {}
    real_write = pipeline.write_image

    def counting_write(path, *args, **kwargs):
        writes[str(path)] = writes.get(str(path), 0) + 1
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(pipeline, "write_image", counting_write)
    barrier = threading.Barrier(2)
    workers = [Worker("cuda", 0), Worker("cuda", 1)]
    backends = open_pool(lambda w: FakeDeviceBackend(w.device, barrier), workers)
    jobs = plan_jobs([src], tmp_path / "pool")
    report = run_pool(backends, workers, jobs, _spec)
    assert report.count("done") == 9 and report.count("failed") == 0
    assert [r.source for r in report.results] == [str(j.source) for j in jobs]  # one report, the jobs' order
    by_worker = {w: sum(r.worker == w for r in report.results) for w in ("cuda:0", "cuda:1")}
    assert by_worker["cuda:0"] >= 1 and by_worker["cuda:1"] >= 1 and sum(by_worker.values()) == 9
    assert all(b.tiles > 0 for b in backends)
    assert sorted(writes) == sorted(str(j.output) for j in jobs) and set(writes.values()) == {1}
    assert "x2 (cuda:0, cuda:1)" in report.backend
    # the same images on one backend: byte-identical files
    single = run_batch(FakeDeviceBackend(0, threading.Barrier(1)), plan_jobs([src], tmp_path / "one"),
                       _spec(backends[0]))
    assert single.count("done") == 9
    for job in jobs:
        assert job.output.read_bytes() == (tmp_path / "one" / job.output.name).read_bytes()


def test_a_failing_device_fails_its_images_only_and_the_pool_goes_on(tmp_path):
    src = _folder(tmp_path / "in", 6)

    class Broken(FakeDeviceBackend):
        def infer(self, tiles):
            super().infer(tiles)  # the first call waits for the other device: both take images
            raise RuntimeError("device lost")

    workers = [Worker("cuda", 0), Worker("cuda", 1)]
    barrier = threading.Barrier(2)
    backends = [FakeDeviceBackend(0, barrier), Broken(1, barrier)]
    jobs = plan_jobs([src], tmp_path / "out")
    report = run_pool(backends, workers, jobs, _spec)
    assert [r.source for r in report.results] == [str(j.source) for j in jobs]  # every image has its row
    failed = [r for r in report.results if r.status == "failed"]
    done = [r for r in report.results if r.status == "done"]
    assert failed and done and len(failed) + len(done) == 6
    assert {r.worker for r in failed} == {"cuda:1"} and {r.worker for r in done} == {"cuda:0"}
    for r in failed:
        assert r.reason == f"{r.source}: RuntimeError: device lost" and (r.error, r.exit_code) == ("RuntimeError", 1)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(Path(r.output).name for r in done)
    assert not list(tmp_path.rglob("*.tmp"))  # nothing half-written


def test_open_pool_closes_what_it_opened_when_one_device_fails():
    closed = []

    class Closing(FakeDeviceBackend):
        def close(self):
            closed.append(self.device)

    def open_one(w):
        if w.device == 2:
            raise HRXError("device 2: no such CUDA device")
        return Closing(w.device, threading.Barrier(1))

    with pytest.raises(HRXError, match="device 2"):
        open_pool(open_one, [Worker("cuda", 0), Worker("cuda", 1), Worker("cuda", 2)])
    assert closed == [0, 1]


def test_worker_planning():
    assert plan_workers([0, 1]) == [Worker("cuda", 0), Worker("cuda", 1)]
    # an even split (8 // 3 = 2 each, 2 left unused): SharedSessions hands any batch to any session, and
    # every session must compute a tile the same way
    assert [w.threads for w in plan_workers(None, 3, 8)] == [2, 2, 2]
    assert [w.threads for w in plan_workers(None, 2, 8)] == [4, 4]
    assert [w.threads for w in plan_workers(None, 4, 2)] == [1, 1, 1, 1]  # at least one thread each
    assert plan_workers(None)[0].threads >= 1  # default: every core
    assert parse_devices("0, 2") == [0, 2]
    for bad in ("", "a", "0,0", "-1"):
        with pytest.raises(HRXError, match="--devices"):
            parse_devices(bad)
    with pytest.raises(HRXError, match="one worker per device"):
        plan_workers([0, 1], workers=2)


def test_cli_cpu_workers_match_one_worker_and_devices_need_cuda(tmp_path):
    src = _folder(tmp_path / "in", 5)
    engine = write_toy(tmp_path / "toy.onnx", tile=16, batch=2)
    runner = CliRunner()
    one = runner.invoke(app, ["upscale", str(src), "-o", str(tmp_path / "one"), "--engine", str(engine),
                              "--workers", "1", "--threads", "2"])
    assert one.exit_code == 0, one.output
    two = runner.invoke(app, ["upscale", str(src), "-o", str(tmp_path / "two"), "--engine", str(engine),
                              "--workers", "2", "--threads", "2", "--json", str(tmp_path / "r.json")])
    assert two.exit_code == 0, two.output
    assert "2 workers (cpu:0, cpu:1)" in two.stderr
    for path in sorted((tmp_path / "one").iterdir()):
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(tmp_path / "two" / path.name)))
    cuda = runner.invoke(app, ["upscale", str(src), "-o", str(tmp_path / "x"), "--engine", str(engine),
                               "--backend", "onnxrt-cpu", "--devices", "0,1"])
    assert cuda.exit_code != 0 and "CUDA devices" in cuda.stderr
    both = runner.invoke(app, ["upscale", str(src), "-o", str(tmp_path / "x"), "--device", "0", "--devices", "0,1"])
    assert both.exit_code != 0 and "not both" in both.stderr


class SlowSession(FakeDeviceBackend):
    """A CPU session stand-in that records which tiles it ran and waits until both sessions have
    started a batch, so a tile stream that is not shared would time out instead of passing."""

    name = "fake-cpu"

    def __init__(self, device: int, started: threading.Barrier) -> None:
        super().__init__(device, started)
        self.info = ModelInfo("fake", 2, 3, 3, 8, 1, 4, 4)
        self.seen: list[float] = []

    def infer(self, tiles):
        self.seen.append(float(tiles.sum()))
        return super().infer(tiles)


def test_shared_sessions_split_the_tiles_of_one_image_and_keep_their_order():
    image = RNG.random((3, 45, 61), dtype=np.float32)
    spec = TileSpec(8, 4, 2, 4, 1, "blend")
    single = upscale_tiled(image, SlowSession(0, threading.Barrier(1)).infer, spec)
    barrier = threading.Barrier(2)
    sessions = [SlowSession(0, barrier), SlowSession(1, barrier)]
    shared = SharedSessions(sessions)
    try:
        out = upscale_tiled(image, shared.infer, spec, infer_many=shared.infer_many)
    finally:
        shared.close()
    assert np.array_equal(out, single)  # same values in the same places, whichever session ran a tile
    assert all(len(s.seen) > 3 for s in sessions) and sum(len(s.seen) for s in sessions) == 15 * 11
    assert set(sessions[0].seen).isdisjoint(sessions[1].seen)  # no tile ran twice


def test_one_image_on_two_cpu_workers_runs_its_tiles_on_both_sessions(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(RNG.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(src / "big.png")
    barrier = threading.Barrier(2)
    workers = [Worker("cpu", 0, 1), Worker("cpu", 1, 1)]
    backends = [SlowSession(0, barrier), SlowSession(1, barrier)]
    report = run_pool(backends, workers, plan_jobs([src], tmp_path / "two"), _spec)
    assert report.count("done") == 1 and all(len(b.seen) > 3 for b in backends)
    one = run_batch(SlowSession(0, threading.Barrier(1)), plan_jobs([src], tmp_path / "one"), _spec(backends[0]))
    assert one.count("done") == 1
    assert (tmp_path / "two" / "big.png").read_bytes() == (tmp_path / "one" / "big.png").read_bytes()


@pytest.mark.parametrize("backend", ["onnxrt-cpu", "openvino"])
def test_cli_shares_tiles_between_sessions_byte_identically(tmp_path, backend):
    """ONNX Runtime / OpenVINO toy model: one large image and a folder, one single-thread session vs two
    (the default with 2 threads): byte-identical files (sessions with the same thread count give the same
    floats, whichever runs a tile)."""
    big = tmp_path / "big"
    big.mkdir()
    Image.fromarray(RNG.integers(0, 256, (90, 130, 3), dtype=np.uint8)).save(big / "big.png")
    folder = _folder(tmp_path / "folder", 4)
    engine = write_toy(tmp_path / "toy.onnx", tile=16, batch=1)
    runner = CliRunner()
    for src in (big, folder):
        one = runner.invoke(app, ["upscale", str(src), "-o", str(tmp_path / "one" / src.name), "--engine", str(engine),
                                  "--workers", "1", "--threads", "1", "--backend", backend, "--precision", "fp32"])
        assert one.exit_code == 0, one.output
        two = runner.invoke(app, ["upscale", str(src), "-o", str(tmp_path / "two" / src.name), "--engine", str(engine),
                                  "--threads", "2", "--backend", backend, "--precision", "fp32"])
        assert two.exit_code == 0, two.output
        assert "2 workers (cpu:0, cpu:1)" in two.stderr  # the default: one single-thread session per core
        files = sorted((tmp_path / "one" / src.name).iterdir())
        assert files
        for path in files:
            assert path.read_bytes() == (tmp_path / "two" / src.name / path.name).read_bytes()


def test_one_small_image_gets_one_session_with_every_core(tmp_path):
    src = tmp_path / "small.png"
    Image.fromarray(RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(src)
    engine = write_toy(tmp_path / "toy.onnx", tile=16, batch=1)
    res = CliRunner().invoke(app, ["upscale", str(src), "-o", str(tmp_path / "out"), "--engine", str(engine),
                                   "--threads", "2", "--backend", "onnxrt-cpu"])
    assert res.exit_code == 0, res.output
    assert "workers" not in res.stderr and (tmp_path / "out" / "small.png").is_file()


def test_default_workers(monkeypatch):
    import hrx.runtime.onnxrt as onnxrt

    monkeypatch.setattr(onnxrt, "cuda_available", lambda: False)
    assert runs_cpu_sessions("m.onnx", None, "auto") and runs_cpu_sessions(None, None, "auto")
    assert runs_cpu_sessions("m.onnx", None, "onnxrt-cpu") and runs_cpu_sessions("m.onnx", None, "openvino")
    assert not runs_cpu_sessions("m.engine", None, "auto") and not runs_cpu_sessions(None, "default-x2", "auto")
    assert not runs_cpu_sessions("m.onnx", None, "onnxrt-cuda") and not runs_cpu_sessions("m.onnx", None, "trt")
    monkeypatch.setattr(onnxrt, "cuda_available", lambda: True)
    assert not runs_cpu_sessions("m.onnx", None, "auto") and runs_cpu_sessions("m.onnx", None, "onnxrt-cpu")
    assert runs_cpu_sessions(None, None, "openvino")
    assert auto_workers(True, 3) == 3 and auto_workers(False, 3) == 1 and auto_workers(True) >= 1


def test_batches_in_reads_the_header_only(tmp_path):
    info = ModelInfo("fake", 2, 3, 3, 16, 1, 4, 4)
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(tmp_path / "one.png")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "many.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert batches_in(tmp_path / "one.png", info) == 1
    spec = TileSpec(16, info.tile_overlap, 2, info.size_multiple, 1)
    from hrx.runtime.tiling import tile_count
    assert batches_in(tmp_path / "many.png", info) == tile_count(40, 50, spec) > 4
    assert batches_in(tmp_path / "bad.png", info) is None and batches_in(tmp_path / "missing.png", info) is None
