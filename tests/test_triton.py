"""Triton: hrx export --batch dynamic (ORT vs PyTorch at several batch sizes), hrx triton-repo (every generated
config parsed with tritonclient's model_config_pb2 and checked against the ONNX graph), and
hrx upscale --backend triton against a real tritonserver (PyTriton's, in .venv-triton made by
scripts/setup.sh --test, ONNX Runtime inside the Python model) on loopback ports: outputs vs local ONNX Runtime,
concurrent clients merged by the dynamic batcher, one-line errors with exit code 2."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from PIL import Image
from typer.testing import CliRunner

import hrx
from hrx.cli.main import app
from hrx.interface import ModelInfo
from hrx.runtime.inference_server_repo import info_from_parameters
from tritonclient.grpc import model_config_pb2  # the triton extra, installed by scripts/setup.sh --test

runner = CliRunner()
TILE = 32  # 2 x hrx-t's size_multiple


@pytest.fixture(scope="module")
def exports(hrx_t_dynamic, tmp_path_factory) -> dict:
    """The session's hrx-t dynamic-batch export, and the toy static-batch model (batch 2) for the static config."""
    from runtime_support import write_toy

    ckpt, dynamic = hrx_t_dynamic
    tmp = tmp_path_factory.mktemp("triton")
    return {"dir": tmp, "ckpt": ckpt, "model": hrx.load_model(ckpt), "dynamic": dynamic,
            "2": write_toy(tmp / "t-2.onnx", tile=TILE, batch=2)}


def _parse(folder: Path):
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _graph_dims(value) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


@pytest.mark.slow
def test_dynamic_batch_export_runs_any_batch_like_pytorch(exports):
    import onnxruntime as ort

    path = exports["dynamic"]
    proto = onnx.load(str(path))
    assert _graph_dims(proto.graph.input[0]) == ["batch", 3, TILE, TILE]
    assert _graph_dims(proto.graph.output[0]) == ["batch", 3, 2 * TILE, 2 * TILE]
    info = ModelInfo.from_onnx(path)
    assert info.extra["batch_axis"] == "dynamic" and int(info.extra["max_batch"]) >= 8 and info.batch == 1
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for batch in (1, 3, 5):
        x = rng.random((batch, 3, TILE, TILE), dtype=np.float32)
        with torch.no_grad():
            ref = exports["model"](torch.from_numpy(x)).numpy()
        got = session.run(None, {"input": x})[0]
        assert got.shape == ref.shape
        assert float(np.abs(got - ref).max()) <= 1e-4, batch
    with pytest.raises(Exception):  # the tile stays static
        session.run(None, {"input": np.zeros((1, 3, TILE + 16, TILE + 16), np.float32)})


@pytest.mark.slow
def test_repo_for_dynamic_onnx_parses_and_matches_the_graph(exports, tmp_path):
    path = exports["dynamic"]
    r = runner.invoke(app, ["triton-repo", str(path), "-o", str(tmp_path / "repo"), "--name", "hrx_t",
                            "--instances", "3"])
    assert r.exit_code == 0, r.output
    folder = tmp_path / "repo" / "hrx_t"
    assert (folder / "1" / "model.onnx").read_bytes() == path.read_bytes()
    cfg = _parse(folder)
    proto = onnx.load(str(path))
    assert cfg.name == "hrx_t" and cfg.backend == "onnxruntime"
    assert cfg.max_batch_size == int(ModelInfo.from_onnx(path).extra["max_batch"])
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds > 0
    for tensors, values in ((cfg.input, proto.graph.input), (cfg.output, proto.graph.output)):
        assert [t.name for t in tensors] == [v.name for v in values]
        assert [list(t.dims) for t in tensors] == [_graph_dims(v)[1:] for v in values]  # batch axis is Triton's
        assert all(t.data_type == model_config_pb2.TYPE_FP32 for t in tensors)
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(3, model_config_pb2.ModelInstanceGroup.KIND_AUTO)]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert info_from_parameters(params, "config") == ModelInfo.from_onnx(path)
    assert "hrx_bisect_map" not in params and params["hrx_tile"] == str(TILE) and params["hrx_scale"] == "2"
    # a second model in the same repository keeps the first
    r = runner.invoke(app, ["triton-repo", str(exports["2"]), "-o", str(tmp_path / "repo"), "--kind", "cpu"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["hrx_t", "t-2"]


@pytest.mark.slow
def test_repo_for_static_onnx_has_no_batcher(exports, tmp_path):
    path = exports["2"]
    r = runner.invoke(app, ["triton-repo", str(path), "-o", str(tmp_path), "--kind", "cpu"])
    assert r.exit_code == 0, r.output
    cfg = _parse(tmp_path / "t-2")
    proto = onnx.load(str(path))
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == _graph_dims(proto.graph.input[0]) == [2, 3, TILE, TILE]
    assert list(cfg.output[0].dims) == _graph_dims(proto.graph.output[0]) == [2, 3, 2 * TILE, 2 * TILE]
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]


@pytest.mark.slow
def test_repo_for_engine_records_compute_capability(exports, tmp_path):
    from hrx.runtime.trt.cache import EngineRecord, write_record

    info = ModelInfo.from_onnx(exports["dynamic"])
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not a real plan, TensorRT is not needed to write the repository")
    write_record(engine, EngineRecord(
        onnx_sha256="0" * 64, onnx_path=str(exports["dynamic"]), precision="fp16", tensorrt_version="10.13",
        gpu_name="stand-in", compute_capability="8.9", input_name="input", input_shape=[-1, 3, TILE, TILE],
        output_name="output", output_shape=[-1, 3, 2 * TILE, 2 * TILE], model_info=info.to_props()))
    r = runner.invoke(app, ["triton-repo", str(engine), "-o", str(tmp_path / "repo"), "--instances", "2"])
    assert r.exit_code == 0, r.output
    folder = tmp_path / "repo" / "m"
    assert (folder / "1" / "model.plan").read_bytes() == engine.read_bytes()
    cfg = _parse(folder)
    assert cfg.backend == "tensorrt" and dict(cfg.cc_model_filenames) == {"8.9": "model.plan"}
    assert cfg.max_batch_size == int(info.extra["max_batch"]) and cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [3, TILE, TILE] and list(cfg.output[0].dims) == [3, 2 * TILE, 2 * TILE]
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_GPU)]


@pytest.mark.parametrize("io, dtype", [("fp32", "TYPE_FP32"), ("fp16", "TYPE_FP16")])
def test_repo_for_engine_declares_the_io_type_of_its_graph(tmp_path, io, dtype):
    """An engine built from an `hrx export --precision fp16 --io fp16` file takes and returns FP16: its
    config must say so (Triton refuses requests whose type differs from the engine's)."""
    from hrx.runtime.trt.cache import EngineRecord, write_record

    info = ModelInfo(arch="hrx-t", scale=2, in_channels=3, out_channels=3, tile=TILE, batch=1, size_multiple=16,
                     tile_overlap=8, precision="fp16", extra={"io_precision": io})
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not a real plan")
    write_record(engine, EngineRecord(
        onnx_sha256="0" * 64, onnx_path="m.onnx", precision="fp16", tensorrt_version="10.13", gpu_name="stand-in",
        compute_capability="8.9", input_name="input", input_shape=[1, 3, TILE, TILE], output_name="output",
        output_shape=[1, 3, 2 * TILE, 2 * TILE], model_info=info.to_props()))
    r = runner.invoke(app, ["triton-repo", str(engine), "-o", str(tmp_path / "repo")])
    assert r.exit_code == 0, r.output
    cfg = _parse(tmp_path / "repo" / "m")
    want = model_config_pb2.DataType.Value(dtype)
    assert [t.data_type for t in cfg.input] == [want] and [t.data_type for t in cfg.output] == [want]


@pytest.mark.slow
@pytest.mark.parametrize("args,needle", [
    (["missing.onnx"], "no such model file"),
    (["{ckpt}"], "expected an .onnx"),
    (["{onnx}", "--name", "a/b"], "model name"),
])
def test_repo_errors_are_one_line(exports, tmp_path, args, needle):
    args = [a.format(ckpt=exports["ckpt"], onnx=exports["2"]) for a in args]
    r = runner.invoke(app, ["triton-repo", *args, "-o", str(tmp_path / "repo")])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.output
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


# -- a real Triton server ------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
SERVER_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
START_TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(exports):
    """PyTriton's tritonserver on 127.0.0.1 serving the dynamic-batch export as "hrx"; stopped at the end."""
    assert SERVER_PYTHON.is_file(), f"{SERVER_PYTHON} is missing: run scripts/setup.sh --test (it makes .venv-triton)"
    http, grpc = _free_port(), _free_port()
    log_path = exports["dir"] / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([str(SERVER_PYTHON), str(ROOT / "scripts" / "pytriton_serve.py"), str(exports["dynamic"]),
                             "--name", "hrx", "--http-port", str(http), "--grpc-port", str(grpc)],
                            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: the last test kills it whole
    started = time.monotonic()
    while "READY" not in log_path.read_text():
        if proc.poll() is not None or time.monotonic() - started > START_TIMEOUT_S:
            proc.kill()
            pytest.fail(f"tritonserver did not start (exit {proc.poll()}): {log_path.read_text()[-3000:]}")
        time.sleep(0.5)
    try:
        token = log_path.read_text().split("READY", 1)[1].split()[2]
        yield {"http": f"127.0.0.1:{http}", "grpc": f"grpc://127.0.0.1:{grpc}", "token": token, "proc": proc}
    finally:
        proc.stdin.close()  # the server stops when its stdin closes
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def _images(folder: Path) -> Path:
    """A few small images of different layouts (tiles across both axes, gray, alpha)."""
    from skimage import data

    folder.mkdir()
    Image.fromarray(data.astronaut()[100:170:, 150:245]).save(folder / "rgb.png")  # 70 x 95: 3 x 4 tiles
    Image.fromarray(data.camera()[200:240, 200:260]).save(folder / "gray.png")
    rgba = np.dstack([data.coffee()[50:90, 60:100], np.linspace(0, 255, 40 * 40).reshape(40, 40).astype(np.uint8)])
    Image.fromarray(rgba).save(folder / "alpha.png")
    return folder


def _upscale(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, ["upscale", *args, "-q"])
    return r.exit_code, r.output


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_upscale_over_triton_matches_local_onnxruntime(exports, server, tmp_path, protocol):
    images = _images(tmp_path / "in")
    code, out = _upscale(str(images), "-o", str(tmp_path / "local"), "--engine", str(exports["dynamic"]),
                         "--backend", "onnxrt-cpu")
    assert code == 0, out
    code, out = _upscale(str(images), "-o", str(tmp_path / "remote"), "--backend", "triton", "--url",
                         server[protocol], "--model-name", "hrx", "--json", str(tmp_path / "r.json"))
    assert code == 0, out
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert report["backend"] == f"triton-{protocol}" and report["done"] == 3
    for name in ("rgb.png", "gray.png", "alpha.png"):
        local = np.asarray(Image.open(tmp_path / "local" / name), np.int16)
        remote = np.asarray(Image.open(tmp_path / "remote" / name), np.int16)
        assert local.shape == remote.shape
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "remote" / name).read_bytes(), \
            f"{name}: max difference {np.abs(local - remote).max()} levels"


@pytest.mark.slow
def test_concurrent_clients_are_batched_and_get_their_own_tiles(exports, server):
    """8 clients x 3 one-tile requests at once: Triton merges them (fewer executions than requests, batches
    larger than 1 in its statistics) and every client gets the result of its own tile."""
    import onnxruntime as ort
    import tritonclient.http as httpclient

    from hrx.runtime.inference_server import TritonBackend

    def counts() -> tuple[int, int, dict[int, int]]:
        stats = httpclient.InferenceServerClient(server["http"]).get_inference_statistics(
            "hrx", headers={"triton-access-token": server["token"]})["model_stats"][0]
        sizes = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}
        return int(stats["inference_count"]), int(stats["execution_count"]), sizes

    session = ort.InferenceSession(str(exports["dynamic"]), providers=["CPUExecutionProvider"])
    clients, rounds = 8, 3
    rng = np.random.default_rng(7)
    tiles = rng.random((clients, rounds, 1, 3, TILE, TILE), dtype=np.float32)
    results: dict[tuple[int, int], np.ndarray] = {}
    backends = [TritonBackend(server["grpc" if c % 2 else "http"], "hrx") for c in range(clients)]
    barrier = threading.Barrier(clients)

    def client(c: int) -> None:
        barrier.wait()
        for r in range(rounds):
            results[c, r] = backends[c].infer(tiles[c, r])

    before = counts()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    after = counts()
    for b in backends:
        b.close()
    assert len(results) == clients * rounds
    for (c, r), got in results.items():
        ref = session.run(None, {"input": tiles[c, r]})[0]
        assert float(np.abs(got - ref).max()) <= 1e-5, (c, r)
    requests = after[0] - before[0]
    executions = after[1] - before[1]
    merged = {size: n - before[2].get(size, 0) for size, n in after[2].items() if size > 1}
    assert requests == clients * rounds
    assert executions < requests, f"{requests} requests ran as {executions} executions: nothing was batched"
    assert any(n > 0 for n in merged.values()), after[2]


@pytest.mark.slow
def test_triton_errors_are_one_line_exit_2(exports, server, tmp_path):
    images = _images(tmp_path / "in")
    silent = socket.socket()  # accepts connections and never answers: a hung server
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    cases = [
        (["--url", f"127.0.0.1:{_free_port()}", "--model-name", "hrx"], "cannot reach a Triton server"),
        (["--url", f"grpc://127.0.0.1:{_free_port()}", "--model-name", "hrx", "--timeout", "3"],
         "cannot reach a Triton server"),
        (["--url", server["http"], "--model-name", "nope"], "no such model ready on the server"),
        (["--url", server["grpc"], "--model-name", "nope"], "no such model ready on the server"),
        (["--url", f"127.0.0.1:{silent.getsockname()[1]}", "--model-name", "hrx", "--timeout", "1"],
         "cannot reach a Triton server"),
        (["--url", server["http"]], "needs --url"),
    ]
    try:
        for args, needle in cases:
            code, out = _upscale(str(images), "-o", str(tmp_path / "out"), "--backend", "triton", *args)
            lines = out.strip().splitlines()
            assert code == 2 and len(lines) == 1 and needle in lines[0], (args, out)
            assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    finally:
        silent.close()


class _ScriptedServer:
    """Stands in for the client calls of TritonBackend: ``script`` says, request by request, whether the
    result comes back (a tile) or raises ``error``; records what was cancelled."""

    def __init__(self, script: list[bool], error: Exception) -> None:
        self.script, self.error, self.sent, self.cancelled = list(script), error, 0, []

    def backend(self, retries: int = 2, breaker: int = 2):
        from hrx.runtime.inference_server import TritonBackend

        b = TritonBackend.__new__(TritonBackend)  # no server: only the retry / breaker / cancel logic runs
        b.url, b.model_name, b.retries, b.breaker, b.backoff, b.inflight = "x:1", "hrx", retries, breaker, 0.0, 3
        b._failures, b._down, b._lock = 0, None, threading.Lock()
        b._submit = self.submit
        b._result = self.result
        b._cancel = self.cancelled.append
        return b

    def submit(self, tiles):
        self.sent += 1
        return (self.sent, self.script.pop(0) if self.script else True, tiles)

    def result(self, handle):
        _, ok, tiles = handle
        if not ok:
            raise self.error
        return tiles * 2


def test_retries_breaker_and_cancel_without_a_server():
    """Transient errors are retried (then counted), a success resets the count, ``breaker`` failures in a
    row open the breaker (every later call fails at once with TritonDown, nothing sent), a refused request
    is not retried, and a stream closed early cancels the requests still in flight."""
    from hrx.errors import BackendDown
    from hrx.runtime.inference_server import TritonDown, TritonError

    tile = np.ones((1, 3, 2, 2), np.float32)
    server = _ScriptedServer([False, True], ConnectionRefusedError("[Errno 111] Connection refused"))
    assert float(server.backend().infer(tile).max()) == 2.0 and server.sent == 2  # one retry, then fine
    server = _ScriptedServer([False] * 3 + [False] * 3, ConnectionResetError("connection reset by peer"))
    b = server.backend(retries=2, breaker=2)
    with pytest.raises(TritonError, match="failed after 3 tries") as first:
        b.infer(tile)
    assert not isinstance(first.value, BackendDown) and server.sent == 3
    with pytest.raises(TritonDown, match="stopped answering"):
        b.infer(tile)
    sent = server.sent
    with pytest.raises(TritonDown):
        list(b.infer_many([tile, tile]))
    assert server.sent == sent == 6 and TritonDown.exit_code == 2
    server = _ScriptedServer([False], RuntimeError("[400] unexpected shape for input 'input'"))
    with pytest.raises(TritonError, match="unexpected shape"):
        server.backend().infer(tile)
    assert server.sent == 1  # not a connection failure: no retry
    server = _ScriptedServer([], OSError())
    stream = server.backend().infer_many(iter([tile] * 10))
    next(stream)  # three sent, the first returned: two in flight
    stream.close()
    assert [h[0] for h in server.cancelled] == [2, 3] and server.sent == 3


@pytest.mark.slow
def test_server_killed_mid_batch_fails_the_rest_at_once_exit_2(exports, server, tmp_path, monkeypatch):
    """Last in this module: it kills the server. SIGKILL of its whole process group once the report shows
    two finished images: the images done stay whole, the request in flight is retried then fails, the
    circuit breaker fails the images left at once (one line), exit code 2, every report line valid."""
    import json
    import signal

    import hrx.runtime.inference_server as inference_server

    monkeypatch.setattr(inference_server, "BACKOFF_S", 0.05)
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for k in range(16):
        Image.fromarray(rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)).save(folder / f"p{k:02d}.png")
    report = tmp_path / "r.jsonl"

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if report.exists() and report.read_text().count('"status": "done"') >= 2:
                break
            time.sleep(0.01)
        os.killpg(server["proc"].pid, signal.SIGKILL)

    thread = threading.Thread(target=killer)
    thread.start()
    result = runner.invoke(app, ["upscale", str(folder), "-o", str(tmp_path / "out"), "--backend", "triton",
                                 "--url", server["http"], "--model-name", "hrx", "--timeout", "5", "--report",
                                 str(report)])
    thread.join()
    assert result.exit_code == 2, result.output
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    images = [r for r in rows if r["type"] == "image"]
    done = [r for r in images if r["status"] == "done"]
    failed = [r for r in images if r["status"] == "failed"]
    assert len(images) == 16 and rows[-1]["type"] == "summary" and 2 <= len(done) < 16
    assert {r["error"] for r in failed} <= {"TritonError", "TritonDown"} and any(not r["attempted"] for r in failed)
    for r in done:
        with Image.open(r["output"]) as im:
            assert im.size == (120, 120)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(Path(r["output"]).name for r in done)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    not_run = [r for r in failed if not r["attempted"]]
    assert errors[-1] == f"error: {len(failed)} of 16 images failed ({len(not_run)} not run)", result.stderr
    tried = [r for r in failed if r["attempted"]]  # each tried after the kill: retried, then counted
    assert 1 <= len(tried) <= inference_server.DEFAULT_BREAKER, result.stderr
    assert len(errors) == len(tried) + 2 and "not run (" in errors[-2], result.stderr  # one line for the rest
    assert tried[-1]["error"] == "TritonDown" and "stopped answering" in tried[-1]["reason"]
