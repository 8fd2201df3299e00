"""OpenVINO backend: f32 against ONNX Runtime FP32 (hrx-t and a spandrel network, perturbed weights), BF16
within a PSNR bound and not f32, the compiled-model cache, plugin-op refusal, shapes and errors, hrx verify,
OpenVINO streams.

OpenVINO computes in BF16 by default on CPUs with AVX512-BF16 / AMX: every comparison here pins the
precision (the backend always sets INFERENCE_PRECISION_HINT)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import assert_not_bicubic
from hrx import metrics
from hrx.errors import HRXError
from hrx.runtime.factory import BackendRequest, open_backend
from hrx.runtime.onnxrt import OnnxRuntimeBackend
from hrx.runtime.openvino import OpenVINOBackend, OpenVINOCompileError
from runtime_support import assert_bad_files_refused, toy_model, write_toy

pytest.importorskip("openvino")


def _tiles(backend, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(backend.input_shape, dtype=np.float32)


@pytest.fixture(scope="module")
def span_onnx(tmp_path_factory):
    """spandrel's SPAN x2 (tiny, perturbed), exported at tile 32."""
    from hrx.export.onnx_export import export_onnx
    import zoo

    root = tmp_path_factory.mktemp("ov_span")
    zoo.save(zoo.build("SPAN", 2), root / "span.safetensors")
    export_onnx(root / "span.safetensors", root / "span.onnx", tile=32)
    return root / "span.onnx"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HRX_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.slow
def test_f32_matches_onnxruntime_on_hrx_t(hrx_t_dynamic):
    _, path = hrx_t_dynamic
    ov, ort = OpenVINOBackend(path, precision="fp32"), OnnxRuntimeBackend(path)
    assert (ov.name, ov.info, ov.input_shape) == ("openvino", ort.info, ort.input_shape)
    x = _tiles(ov)
    want = ort.infer(x)
    got = ov.infer(x)
    assert np.abs(got - want).max() <= 1e-4
    assert_not_bicubic(got, x, ov.info.scale)
    # the queue: results in order, several batches in flight
    batches = [_tiles(ov, seed) for seed in range(5)]
    for out, batch in zip(ov.infer_many(iter(batches)), batches):
        np.testing.assert_allclose(out, ort.infer(batch), atol=1e-4)
    with pytest.raises(HRXError, match="expected tiles of shape"):
        ov.infer(x[:, :, :16])
    # BF16 differs from f32 (the hint is honoured) and stays within a PSNR bound (measured 54.7 dB on an
    # AVX512-BF16 CPU); a CPU without BF16 runs the bf16 request in f32, the same numbers
    from hrx.runtime.precision_policy import bf16_native, cpu_flags

    with OpenVINOBackend(path, precision="bf16") as bf16:
        out = bf16.infer(x)
    if bf16_native(cpu_flags()):
        psnr = metrics.psnr(np.clip(out, 0, 1), np.clip(got, 0, 1))
        assert 45.0 < psnr < 90.0, psnr
    else:
        np.testing.assert_allclose(out, got, atol=1e-5)
    ov.close()
    ov.close()  # idempotent


@pytest.mark.slow
def test_f32_matches_onnxruntime_on_spandrel_span(span_onnx):
    ov, ort = OpenVINOBackend(span_onnx, precision="fp32"), OnnxRuntimeBackend(span_onnx)
    x = _tiles(ov, 3)
    got, want = ov.infer(x), ort.infer(x)
    assert np.abs(got - want).max() <= 1e-4
    assert_not_bicubic(got, x, ov.info.scale)


def test_compiled_model_cache_is_hit_on_second_open(tmp_path):
    from hrx.paths import file_sha256
    from hrx.runtime.openvino import cache_dir

    path = write_toy(tmp_path / "toy.onnx", tile=16, batch=2)
    first = OpenVINOBackend(path)
    assert not first.loaded_from_cache
    folder = cache_dir(path, file_sha256(path))
    assert folder.is_relative_to(tmp_path / "cache") and any(folder.iterdir())
    second = OpenVINOBackend(path)
    assert second.loaded_from_cache
    x = _tiles(second)
    np.testing.assert_array_equal(first.infer(x), second.infer(x))


def _plugin_toy(path, ops_metadata: bool):
    """The toy with its ReLU as an ``hrx::`` local function (what ``--ops plugin`` files carry)."""
    model = toy_model(tile=16)
    fn = helper.make_function("hrx", "MyRelu", ["x"], ["y"], [helper.make_node("Relu", ["x"], ["y"])],
                              [helper.make_opsetid("", 17)])
    for node in model.graph.node:
        if node.op_type == "Relu":
            node.op_type, node.domain = "MyRelu", "hrx"
    model.functions.append(fn)
    model.opset_import.append(helper.make_opsetid("hrx", 1))
    for p in model.metadata_props:
        if p.key == "ops" and ops_metadata:
            p.value = "plugin"
    onnx.save(model, str(path))
    return path


def test_plugin_op_files_are_refused_in_one_line(tmp_path):
    with pytest.raises(OpenVINOCompileError, match=r"plugin.onnx: OpenVINO cannot run hrx:: plugin ops .*--ops native"):
        OpenVINOBackend(_plugin_toy(tmp_path / "plugin.onnx", ops_metadata=True))
    # the finding behind the refusal: OpenVINO's ONNX frontend does not inline hrx:: local functions
    with pytest.raises(OpenVINOCompileError, match=r"unlabelled.onnx: OpenVINO cannot compile it \(.*\)$") as e:
        OpenVINOBackend(_plugin_toy(tmp_path / "unlabelled.onnx", ops_metadata=False))
    assert "\n" not in str(e.value)
    # ONNX Runtime runs the same file
    assert OnnxRuntimeBackend(tmp_path / "unlabelled.onnx").infer(np.zeros((1, 3, 16, 16), np.float32)).shape == (1, 3, 32, 32)


def test_errors_are_one_line_like_onnxruntime(tmp_path):
    assert_bad_files_refused(OpenVINOBackend, tmp_path, "not a readable ONNX file")
    with pytest.raises(HRXError, match="unknown OpenVINO precision 'fp8'"):
        OpenVINOBackend(write_toy(tmp_path / "toy.onnx"), precision="fp8")


def test_factory_opens_openvino(tmp_path):
    path = write_toy(tmp_path / "toy.onnx", tile=16, batch=2)
    backend = open_backend(BackendRequest(engine=path, backend="openvino", threads=1, precision="fp32"))
    assert backend.name == "openvino" and backend.precision == "fp32"
    ort = OnnxRuntimeBackend(path)
    x = _tiles(backend)
    assert np.abs(backend.infer(x) - ort.infer(x)).max() <= 1e-5
    with pytest.raises(HRXError, match="--backend openvino runs on the CPU"):
        open_backend(BackendRequest(engine=path, backend="openvino", device=0))


@pytest.mark.slow
def test_verify_compares_openvino_with_pytorch(hrx_t_dynamic):
    from typer.testing import CliRunner

    from hrx.cli.main import app

    ckpt, path = hrx_t_dynamic
    res = CliRunner().invoke(app, ["verify", str(path), "-c", str(ckpt), "--backends", "openvino"])
    assert res.exit_code == 0, res.output
    assert any(line.split()[:2] == ["openvino-f32", "PASS"] for line in res.output.splitlines()), res.output


def test_streams_mode_one_compiled_model_shared_by_the_workers(tmp_path, monkeypatch):
    """CPU_PARALLELISM "streams": one compiled model with a stream per worker, its infer called from every
    worker thread at once; the same numbers as one stream (f32)."""
    from PIL import Image
    from typer.testing import CliRunner

    import hrx.runtime.openvino as ov_mod
    from hrx.cli.main import app
    from hrx.runtime.pool import SharedSessions

    path = write_toy(tmp_path / "toy.onnx", tile=16, batch=2)
    one = OpenVINOBackend(path, threads=1)
    two = OpenVINOBackend(path, threads=2, streams=2)
    batches = [_tiles(one, seed) for seed in range(6)]
    want = [one.infer(b) for b in batches]
    shared = SharedSessions([two, two])
    for got, ref in zip(shared.infer_many(iter(batches)), want):
        np.testing.assert_allclose(got, ref, atol=1e-6)
    shared.stop()
    monkeypatch.setattr(ov_mod, "CPU_PARALLELISM", "streams")
    (tmp_path / "in").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(tmp_path / "in" / "a.png")
    res = CliRunner().invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--engine", str(path),
                                   "--backend", "openvino", "--precision", "fp32", "--threads", "2"])
    assert res.exit_code == 0, res.output
    assert "2 workers (cpu:0, cpu:1)" in res.stderr and (tmp_path / "out" / "a.png").is_file()


def test_precision_is_pinned_on_every_cpu(tmp_path, monkeypatch):
    """Each precision is asked for explicitly (INFERENCE_PRECISION_HINT in the compile config, fp32 too)
    and the compiled model reports it. Both are read, not inferred from numbers: OpenVINO's default is
    BF16 on CPUs with AVX512-BF16 / AMX and f32 elsewhere, where an unpinned f32 run gives the same numbers
    and the same property (f32 also for a bf16 request: no BF16 to run)."""
    import openvino

    import hrx.runtime.openvino as ov_mod
    from hrx.runtime import precision_policy

    configs = []

    class RecordingCore:
        def __init__(self, real):
            self.real = real

        def compile_model(self, model, device, config):
            configs.append(dict(config))
            return self.real.compile_model(model, device, config)

        def __getattr__(self, name):
            return getattr(self.real, name)

    real_core = ov_mod.core
    monkeypatch.setattr(ov_mod, "core", lambda: RecordingCore(real_core()))
    path = write_toy(tmp_path / "toy.onnx", tile=16)
    bf16_runs = precision_policy.bf16_native(precision_policy.cpu_flags())
    for precision, hint, runs_as in (("fp32", "f32", openvino.Type.f32),
                                     ("bf16", "bf16", openvino.Type.bf16 if bf16_runs else openvino.Type.f32)):
        with OpenVINOBackend(path, precision=precision, cache=False) as backend:
            assert configs[-1].get("INFERENCE_PRECISION_HINT") == hint
            assert backend.compiled.get_property("INFERENCE_PRECISION_HINT") == runs_as
    assert len(configs) == 2

class _CountingCore:
    """``openvino.Core`` that records the thread of every compile_model call."""

    def __init__(self, inner) -> None:
        self.inner, self.threads = inner, []

    def compile_model(self, *args, **kwargs):
        import threading

        self.threads.append(threading.current_thread().name)
        return self.inner.compile_model(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture
def counting_core(monkeypatch):
    import hrx.runtime.openvino as ov_mod

    counting = _CountingCore(ov_mod.core())
    monkeypatch.setattr(ov_mod, "core", lambda: counting)
    return counting


def test_cpu_workers_open_one_compiled_model_by_default(tmp_path, counting_core):
    """Default CPU_PARALLELISM ("streams"): two CPU workers get one compiled model of two streams (one compile,
    the model file hashed once); its results match a one-thread model's (f32)."""
    import hrx.runtime.openvino as ov_mod
    from hrx.paths import _sha256
    from hrx.runtime.factory import open_cpu_sessions

    assert ov_mod.CPU_PARALLELISM == "streams"
    path = write_toy(tmp_path / "toy.onnx", tile=16, batch=2)
    hashed = _sha256.cache_info().misses
    runners = open_cpu_sessions(BackendRequest(path, backend="openvino", precision="fp32"), [1, 1])
    assert runners[0] is runners[1] and runners[0].streams == 2
    assert len(counting_core.threads) == 1 and _sha256.cache_info().misses == hashed + 1
    one = OpenVINOBackend(path, threads=1)
    batches = [_tiles(one, seed) for seed in range(4)]
    for got, batch in zip(runners[0].infer_many(iter(batches)), batches):
        np.testing.assert_allclose(got, one.infer(batch), atol=1e-6)
    assert _sha256.cache_info().misses == hashed + 1  # the second open: the hash is remembered
    runners[0].close()


def test_sessions_mode_compiles_the_sessions_at_once(tmp_path, monkeypatch, counting_core):
    """CPU_PARALLELISM "sessions": one one-thread compiled model per worker, compiled on threads of their own;
    every session gives the numbers of a single one."""
    import hrx.runtime.openvino as ov_mod
    from hrx.runtime.factory import open_cpu_sessions

    monkeypatch.setattr(ov_mod, "CPU_PARALLELISM", "sessions")
    path = write_toy(tmp_path / "toy.onnx", tile=16, batch=2)
    runners = open_cpu_sessions(BackendRequest(path, backend="openvino", precision="fp32"), [1, 1])
    assert len({id(r) for r in runners}) == 2 and all(r.streams == 1 for r in runners)
    assert len(counting_core.threads) == 2
    assert all(name.startswith("hrx-openvino-open") for name in counting_core.threads), counting_core.threads
    x = _tiles(runners[0])
    np.testing.assert_allclose(runners[0].infer(x), runners[1].infer(x), atol=1e-6)
    for r in runners:
        r.close()


def test_cpu_workers_fall_back_to_onnxruntime_sessions(tmp_path):
    """A graph OpenVINO refuses (plugin ops) with fallback: one ONNX Runtime session per worker, one line."""
    from hrx.runtime.factory import open_cpu_sessions

    path = _plugin_toy(tmp_path / "unlabelled.onnx", ops_metadata=False)  # fails inside OpenVINO's compile
    lines = []
    runners = open_cpu_sessions(BackendRequest(path, backend="openvino", precision="fp32", fallback=True,
                                               log=lines.append), [1, 1])
    assert [r.name for r in runners] == ["onnxrt-cpu"] * 2 and runners[0] is not runners[1]
    assert len(lines) == 1 and "running ONNX Runtime CPU instead" in lines[0]
    with pytest.raises(OpenVINOCompileError):
        open_cpu_sessions(BackendRequest(path, backend="openvino", precision="fp32"), [1, 1])

def test_bf16_weights_read_as_written_and_int32_data_files_refused(tmp_path):
    """BF16 weights in ``raw_data`` (what `hrx export --precision bf16` writes) run on OpenVINO close to the
    FP32 graph; the same weights in ``int32_data`` (onnx.helper.make_tensor's field for a list of values,
    which OpenVINO reads as numbers, 0.5 -> 16128.0, and then outputs NaN) are refused in one line."""
    from hrx.export.precision import convert_precision

    model = toy_model(tile=16)
    model.opset_import[0].version, model.ir_version = 22, 10
    fp32 = tmp_path / "toy.onnx"
    onnx.save(model, str(fp32))
    bf16, _ = convert_precision(model, "bf16")
    weights = [t for t in bf16.graph.initializer if t.data_type == TensorProto.BFLOAT16]
    assert len(weights) == 4 and all(t.raw_data and not t.int32_data for t in weights)
    onnx.save(bf16, str(tmp_path / "toy.bf16.onnx"))
    x = _tiles(OnnxRuntimeBackend(fp32))
    want = OnnxRuntimeBackend(fp32).infer(x)
    got = OpenVINOBackend(tmp_path / "toy.bf16.onnx").infer(x)
    assert np.isfinite(got).all() and np.abs(got - want).max() < 0.05 * np.abs(want).max()
    for k, t in enumerate(bf16.graph.initializer):  # the same values, stored as the old export did
        if t.data_type == TensorProto.BFLOAT16:
            values = onnx.numpy_helper.to_array(t).astype(np.float32)
            bf16.graph.initializer[k].CopyFrom(helper.make_tensor(t.name, TensorProto.BFLOAT16, values.shape,
                                                                  values.ravel().tolist()))
    onnx.save(bf16, str(tmp_path / "old.bf16.onnx"))
    with pytest.raises(HRXError, match=r"old.bf16.onnx: its BFLOAT16 weights are stored as int32_data, which "
                                       r"OpenVINO misreads \(the output would be NaN\); export it again"):
        OpenVINOBackend(tmp_path / "old.bf16.onnx")
