"""The TensorRT backend: shape helpers everywhere; end to end where TensorRT and a GPU exist."""
from __future__ import annotations

import numpy as np
import pytest

from hrx.errors import HRXError
from hrx.interface import ModelInfo
from hrx.runtime.trt.backend import TensorRTBackend, _Slot, check_tiles, expected_shapes
from hrx.runtime.trt.env import missing_for_tensorrt, triton_problem

INFO = ModelInfo(arch="hrx-t", scale=2, in_channels=3, out_channels=3, tile=32, batch=2, size_multiple=16,
                 tile_overlap=8)


def test_expected_shapes_follow_the_model_metadata():
    assert expected_shapes(INFO) == ((2, 3, 32, 32), (2, 3, 64, 64))


def test_tiles_of_the_wrong_shape_are_refused_with_the_fix():
    check_tiles(np.zeros((2, 3, 32, 32), np.float32), (2, 3, 32, 32))
    with pytest.raises(HRXError, match=r"pad the last batch"):
        check_tiles(np.zeros((1, 3, 32, 32), np.float32), (2, 3, 32, 32))


# --- end to end: needs TensorRT, a CUDA GPU (and Triton for the plugin export) --------------------

_MISSING = missing_for_tensorrt()
needs_trt = pytest.mark.skipif(_MISSING is not None, reason=f"needs TensorRT and a CUDA GPU: {_MISSING}")


MOE_SCALE = 6.0  # SparseMoE's residual scale (0.1 at init): large enough that a wrong MoETop1 shows in FP16/INT8
# (max |engine - ONNX Runtime| / max |ONNX Runtime|) allowed per build precision; the tests below show that a
# scan or MoE plugin returning zeros exceeds the loosest of them
TOLERANCES = {"fp32": 1e-3, "fp16": 3e-2, "int8": 5e-2}


def perturbed_hrx_t():
    """hrx-t x2 with perturbed weights: an untrained HRX model is exactly bicubic, its scan and MoE add
    nothing, and an engine whose plugins returned zeros would match it."""
    import hrx
    from hrx.blocks.moe import SparseMoE

    from conftest import randomize_params

    model = hrx.create_model("hrx-t", scale=2).eval()
    randomize_params(model, 0.05)
    import torch

    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, SparseMoE):
                block.scale.fill_(MOE_SCALE)
    return model


class Exports(dict):
    """``exports[mode]`` (native / plugin, batch 2 at tile 32) and ``exports[mode, "int8"]`` (its Q/DQ
    calibration on photo crops), each made on first use."""

    def __init__(self, folder):
        super().__init__()
        self.folder = folder

    def __missing__(self, key):
        from hrx.export import export_onnx

        if isinstance(key, tuple):
            mode, _ = key
            self[key] = self.folder / f"{mode}.int8.onnx"
            _calibrate(self[mode], self[key], self.folder)
        elif key == "untrained-plugin":
            import hrx

            self[key] = self.folder / f"{key}.onnx"
            export_onnx(hrx.create_model("hrx-t", scale=2).eval(), self[key], tile=32, batch=2, ops="plugin")
        else:
            self[key] = self.folder / f"{key}.onnx"
            export_onnx(perturbed_hrx_t(), self[key], tile=32, batch=2, ops=key)
        return self[key]


def _calibrate(src, out, folder) -> None:
    from PIL import Image

    from hrx.calibration.pipeline import CalibrateOptions, calibrate
    from tests.test_precision import photo_tiles

    photos = folder / "photos"
    if not photos.is_dir():
        photos.mkdir()
        for k, tile in enumerate(photo_tiles(96, 4)):
            Image.fromarray((tile.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(photos / f"p{k}.png")
    report = calibrate(CalibrateOptions(src, out, photos, samples=8, eval_tiles=6, force=True, target="trt"))
    assert report.written and out.is_file()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return Exports(tmp_path_factory.mktemp("trt"))


def _onnxruntime(path, tiles):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: tiles})[0]


def check_engine_output(got: np.ndarray, want: np.ndarray, tiles: np.ndarray, scale: int, tol: float) -> float:
    """What every engine test asserts: ONNX Runtime's output of the same file is not bicubic (the network
    contributes), and the engine's output is within ``tol`` of it, relative to its largest value."""
    from conftest import assert_not_bicubic

    assert got.shape == want.shape
    assert_not_bicubic(want, tiles, scale, margin=1e-2)
    err = float(np.abs(got.astype(np.float64) - want).max() / max(1.0, float(np.abs(want).max())))
    assert err <= tol, f"engine differs from ONNX Runtime by {err:.3e} of the output scale (> {tol:g})"
    return err


def zero_plugin(src, dst, op: str) -> None:
    """A copy of ``src`` whose ``hrx::op`` returns zeros (its local function's result times zero): what a
    broken plugin gives, run by ONNX Runtime."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    function = next(f for f in model.functions if f.domain == "hrx" and f.name == op)
    out = function.output[0]
    for node in function.node:
        node.output[:] = [o + "_real" if o == out else o for o in node.output]
    function.node.append(helper.make_node("Sub", [out + "_real", out + "_real"], [out]))
    onnx.save(model, str(dst))


@pytest.mark.slow
@pytest.mark.parametrize("op", ["SelectiveScan", "MoETop1"])
def test_the_engine_check_fails_on_a_plugin_that_returns_zeros(exported, tmp_path, op):
    """On the CPU: the plugin graph with one plugin stand-in returning zeros, run by ONNX Runtime, fails
    :func:`check_engine_output` at the loosest tolerance the engine tests use, while the intact graph
    passes; on an untrained model the same broken plugin would pass (why the tests perturb the weights)."""
    tiles = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    want = _onnxruntime(exported["plugin"], tiles)
    loosest = max(TOLERANCES.values())
    assert check_engine_output(want, want, tiles, 2, TOLERANCES["fp32"]) == 0.0
    zero_plugin(exported["plugin"], tmp_path / "zero.onnx", op)
    with pytest.raises(AssertionError, match="engine differs from ONNX Runtime"):
        check_engine_output(_onnxruntime(tmp_path / "zero.onnx", tiles), want, tiles, 2, loosest)
    zero_plugin(exported["untrained-plugin"], tmp_path / "untrained-zero.onnx", op)
    untrained = _onnxruntime(exported["untrained-plugin"], tiles)
    assert np.abs(_onnxruntime(tmp_path / "untrained-zero.onnx", tiles) - untrained).max() < 1e-5


@needs_trt
@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["native", "plugin"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_matches_onnxruntime(exported, tmp_path, mode, precision):
    if mode == "plugin" and triton_problem():
        pytest.skip(f"plugin kernels need Triton: {triton_problem()}")
    from hrx.runtime.trt import TensorRTBackend, build_engine
    from hrx.runtime.trt.builder import options_for

    source = exported[mode, "int8"] if precision == "int8" else exported[mode]
    engine = tmp_path / f"{mode}-{precision}.engine"
    report = build_engine(source, engine, **options_for(precision))
    assert report.record.precision == precision
    assert bool(report.record.plugins) == (mode == "plugin")
    tiles = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    want = _onnxruntime(source, tiles)
    with TensorRTBackend(engine) as backend:
        assert backend.info.tile == 32 and backend.info.batch == 2
        got = backend.infer(tiles)
        assert got.dtype == np.float32
        check_engine_output(got, want, tiles, 2, TOLERANCES[precision])
        many = list(backend.infer_many([tiles, tiles[::-1].copy(), tiles]))
        np.testing.assert_array_equal(many[0], got)
        np.testing.assert_array_equal(many[2], got)


@needs_trt
@pytest.mark.trt
@pytest.mark.gpu
def test_bundled_model_engine_matches_onnxruntime(tmp_path, monkeypatch):
    """The trained bundled default-x2, FP16 engine from its FP32 export, through `--backend trt`'s path
    (BackendRequest, the cached build in the file's own precision)."""
    from hrx.export import export_onnx
    from hrx.runtime.factory import BackendRequest, open_backend
    from tests.test_precision import photo_tiles

    monkeypatch.setenv("HRX_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "x2.onnx"
    export_onnx("default-x2", path, tile=64)
    tiles = photo_tiles(64, 1)
    want = _onnxruntime(path, tiles)
    backend = open_backend(BackendRequest(engine=path, backend="trt"))
    try:
        assert backend.record.precision == "fp16"
        check_engine_output(backend.infer(tiles), want, tiles, 2, TOLERANCES["fp16"])
    finally:
        backend.close()


@needs_trt
@pytest.mark.trt
@pytest.mark.gpu
def test_engine_cache_builds_once(exported, tmp_path):
    from hrx.runtime.trt import engine_for

    first = engine_for(exported["native"], "fp16", root=tmp_path)
    stamp = first.stat().st_mtime_ns
    assert engine_for(exported["native"], "fp16", root=tmp_path) == first
    assert first.stat().st_mtime_ns == stamp, "the cached engine was rebuilt"


# --- infer_many's slot bookkeeping, with the GPU work replaced by a host stand-in ------------------

class _Event:
    def synchronize(self) -> None:
        pass


class _Host:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.array = np.zeros(shape, np.float32)

    def numpy(self) -> np.ndarray:
        return self.array


class StandInTensorRT(TensorRTBackend):
    """TensorRTBackend's own submit / collect / infer_many with two slots; only ``_enqueue`` (the
    CUDA copies and the engine) is replaced by a nearest x2 upscale on the host."""

    def __init__(self) -> None:  # no engine, no GPU
        self.info = INFO
        self.input_shape, self.output_shape = expected_shapes(INFO)
        self._slots = [_Slot(_Host(self.input_shape), _Host(self.output_shape), None, None, _Event(), _Event(),
                             _Event()) for _ in range(2)]
        self._next = 0

    def _enqueue(self, slot, tiles: np.ndarray) -> None:
        slot.host_out.numpy()[...] = tiles.repeat(2, axis=2).repeat(2, axis=3)

    def close(self) -> None:
        pass


def _tiles(k: int) -> np.ndarray:
    return np.random.default_rng(k).random((2, 3, 32, 32), dtype=np.float32)


def _assert_usable(backend: StandInTensorRT) -> None:
    assert not any(s.busy for s in backend._slots)
    np.testing.assert_array_equal(backend.infer(_tiles(9)), _tiles(9).repeat(2, axis=2).repeat(2, axis=3))


def test_infer_many_frees_its_slots_when_the_stream_fails():
    backend = StandInTensorRT()

    def stream():
        for k in range(3):
            yield _tiles(k)
        raise RuntimeError("tiling failed")

    results = []
    with pytest.raises(RuntimeError, match="tiling failed"):
        for out in backend.infer_many(stream()):
            results.append(out)
    assert len(results) == 1  # two batches were still in flight when the stream failed
    np.testing.assert_array_equal(results[0], _tiles(0).repeat(2, axis=2).repeat(2, axis=3))
    _assert_usable(backend)


def test_infer_many_frees_its_slots_when_the_consumer_stops():
    backend = StandInTensorRT()
    many = backend.infer_many(_tiles(k) for k in range(5))
    next(many)
    many.close()
    _assert_usable(backend)


def test_tiling_error_mid_image_leaves_the_backend_usable():
    """hrx upscale: an error while an image is tiled (here Ctrl-C from the progress callback) must not
    leave batches in flight, or every later image would fail with 'slot reused'."""
    from hrx.runtime.tiling import TileSpec, upscale_tiled

    backend = StandInTensorRT()
    spec = TileSpec(tile=32, overlap=8, scale=2, size_multiple=16, batch=2, merge="blend")
    img = np.random.default_rng(3).random((3, 100, 100), dtype=np.float32)

    def interrupt(_n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as caught:
        upscale_tiled(img, backend.infer, spec, interrupt, backend.infer_many)
    _assert_usable(backend)  # while the traceback (a caller's error report) still holds the tiling frame
    assert caught.traceback
    whole = upscale_tiled(img, backend.infer, spec, None, backend.infer_many)
    np.testing.assert_allclose(whole, img.repeat(2, axis=1).repeat(2, axis=2), atol=1e-5)
