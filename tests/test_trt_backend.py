"""The TensorRT backend: shape helpers everywhere; end to end where TensorRT and a GPU exist."""
from __future__ import annotations

import numpy as np
import pytest

from hrx.errors import HRXError
from hrx.runtime.model_info import ModelInfo
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


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    import hrx
    from hrx.export import export_onnx

    out = tmp_path_factory.mktemp("trt")
    model = hrx.create_model("hrx-t", scale=2).eval()
    paths = {}
    for mode in ("native", "plugin"):
        paths[mode] = out / f"{mode}.onnx"
        export_onnx(model, paths[mode], tile=32, batch=2, ops=mode)
    return paths


def _onnxruntime(path, tiles):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: tiles})[0]


@needs_trt
@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("mode, precision, tol", [("native", "fp32", 1e-3), ("native", "fp16", 3e-2),
                                                  ("plugin", "fp32", 1e-3), ("plugin", "fp16", 3e-2)])
def test_engine_matches_onnxruntime(exported, tmp_path, mode, precision, tol):
    if mode == "plugin" and triton_problem():
        pytest.skip(f"plugin kernels need Triton: {triton_problem()}")
    from hrx.runtime.trt import TensorRTBackend, build_engine
    from hrx.runtime.trt.builder import options_for

    engine = tmp_path / f"{mode}-{precision}.engine"
    report = build_engine(exported[mode], engine, **options_for(precision))
    assert report.record.precision == precision
    tiles = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    want = _onnxruntime(exported[mode], tiles)
    with TensorRTBackend(engine) as backend:
        assert backend.info.tile == 32 and backend.info.batch == 2
        got = backend.infer(tiles)
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=tol * max(1.0, float(np.abs(want).max())))
        many = list(backend.infer_many([tiles, tiles[::-1].copy(), tiles]))
        np.testing.assert_array_equal(many[0], got)
        np.testing.assert_array_equal(many[2], got)


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
