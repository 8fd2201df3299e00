"""The TensorRT backend: shape helpers everywhere; end to end where TensorRT and a GPU exist."""
from __future__ import annotations

import numpy as np
import pytest

from hrx.errors import HRXError
from hrx.runtime.model_info import ModelInfo
from hrx.runtime.trt.backend import check_tiles, expected_shapes
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
    try:
        from hrx.export import export_onnx
    except ImportError:
        pytest.skip("exporter not available")
    import hrx

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
