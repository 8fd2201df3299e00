"""ONNX Runtime backend and create_session: toy exports, local-function custom ops, a real hrx-t export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conftest import assert_not_bicubic, perturbed_hrx_t
from hrx import metrics
from hrx.errors import HRXError, MissingDependencyError
from hrx.runtime.onnxrt import OnnxRuntimeBackend, create_session, cuda_available
from hrx.runtime.tiling import TileSpec, upscale_tiled
from runtime_support import assert_bad_files_refused, toy_model, toy_whole, write_toy


def test_backend_runs_toy_and_checks_shapes(tmp_path):
    backend = OnnxRuntimeBackend(write_toy(tmp_path / "toy.onnx", tile=16, batch=2))
    assert backend.name == "onnxrt-cpu"
    assert (backend.info.tile, backend.info.batch, backend.info.scale) == (16, 2, 2)
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    np.testing.assert_allclose(backend.infer(x), toy_whole(x), atol=1e-6)
    with pytest.raises(HRXError, match="expected tiles of shape"):
        backend.infer(x[:1])
    img = np.random.default_rng(1).random((3, 21, 45), dtype=np.float32)
    spec = TileSpec(16, backend.info.tile_overlap, 2, backend.info.size_multiple, 2, "blend")
    out = upscale_tiled(img, backend.infer, spec)
    padded = np.pad(img, ((0, 0), (0, 3), (0, 3)), mode="reflect")  # to the size multiple 4, like the tiler
    np.testing.assert_allclose(out, toy_whole(padded[None])[0][:, :42, :90], atol=1e-5)
    backend.close()


def test_create_session_errors(tmp_path):
    assert_bad_files_refused(create_session, tmp_path, "onnxruntime cannot load it")


def test_metadata_is_required_and_checked(tmp_path):
    bare = toy_model(tile=16)
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(HRXError, match="not an HRX export"):
        OnnxRuntimeBackend(tmp_path / "bare.onnx")
    lying = toy_model(tile=16)
    for p in lying.metadata_props:
        if p.key == "tile":
            p.value = "32"
    onnx.save(lying, str(tmp_path / "lying.onnx"))
    with pytest.raises(HRXError, match="metadata says"):
        OnnxRuntimeBackend(tmp_path / "lying.onnx")


def test_custom_domain_local_function_runs(tmp_path):
    """``--ops plugin`` files define hrx:: ops as local functions: plain onnxruntime inlines them."""
    body = [helper.make_node("Add", ["x", "x"], ["y"])]
    fn = helper.make_function("hrx", "Double", ["x"], ["y"], body, [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("Double", ["input"], ["output"], domain="hrx")], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 2, 2])])
    model = helper.make_model(graph, functions=[fn], opset_imports=[helper.make_opsetid("", 17),
                                                                    helper.make_opsetid("hrx", 1)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "plugin.onnx"))
    session = create_session(tmp_path / "plugin.onnx", ["CPUExecutionProvider"])
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(session.run(None, {"input": x})[0], 2 * x)


def test_cuda_request_without_cuda_is_exit_code_2(tmp_path):
    if cuda_available():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(MissingDependencyError) as e:
        OnnxRuntimeBackend(write_toy(tmp_path / "toy.onnx"), "cuda")
    assert e.value.exit_code == 2


@pytest.mark.gpu
@pytest.mark.skipif("not __import__('hrx.runtime.onnxrt').runtime.onnxrt.cuda_available()",
                    reason="needs onnxruntime-gpu and a CUDA device")
def test_cuda_io_binding_matches_cpu(tmp_path):
    path = write_toy(tmp_path / "toy.onnx", tile=16, batch=2)
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    cpu, cuda = OnnxRuntimeBackend(path, "cpu"), OnnxRuntimeBackend(path, "cuda")
    np.testing.assert_allclose(cuda.infer(x), cpu.infer(x), atol=1e-4)
    np.testing.assert_allclose(cuda.infer(x[::-1].copy()), cpu.infer(x[::-1].copy()), atol=1e-4)


@pytest.fixture(scope="module")
def hrx_t_export(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A real export (hrx.export.export_onnx) of a randomized hrx-t x2, tile 32, batch 2."""
    from hrx.export import export_onnx

    model = perturbed_hrx_t()
    path = tmp_path_factory.mktemp("runtime_export") / "hrx-t.onnx"
    export_onnx(model, path, tile=32, batch=2)
    return path, model


@pytest.mark.slow
def test_real_export_tiles_like_pytorch(hrx_t_export):
    path, model = hrx_t_export
    backend = OnnxRuntimeBackend(path)
    info = backend.info
    assert (info.arch, info.tile, info.batch, info.size_multiple) == ("hrx-t", 32, 2, 16)
    img = np.random.default_rng(4).random((3, 16, 24), dtype=np.float32).repeat(4, 1).repeat(4, 2)  # 64 x 96
    spec = TileSpec(info.tile, info.tile_overlap, info.scale, info.size_multiple, info.batch, "blend")
    tiled_ort = upscale_tiled(img, backend.infer, spec)

    def torch_infer(tiles: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(tiles)).numpy()

    tiled_torch = upscale_tiled(img, torch_infer, spec)
    err = float(np.abs(tiled_ort - tiled_torch).max())
    assert err < 1e-4, f"ONNX Runtime vs PyTorch, same tiles: max abs error {err:.2e}"
    with torch.inference_mode():
        whole = model(torch.from_numpy(img)[None]).numpy()[0]
    assert_not_bicubic(whole[None], img[None], 2)
    psnr = metrics.psnr(tiled_ort, whole, peak=float(np.ptp(whole)))
    assert psnr > 33.0, f"tiled ONNX Runtime vs whole-image PyTorch: {psnr:.2f} dB"


def test_the_shared_cuda_io_binding_is_used_by_one_thread_at_a_time(tmp_path, monkeypatch):
    """The Backend contract says ONNX Runtime's ``infer`` is thread-safe; on CUDA one IoBinding and one
    device output buffer serve every call, so bind, run and copy-out must not interleave. Simulated on the
    CPU: a binding whose run is slow; four threads each get their own tiles back."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import onnxruntime as ort

    from hrx.interface import Backend

    assert Backend.thread_safe is False and OnnxRuntimeBackend.thread_safe is True
    backend = OnnxRuntimeBackend(write_toy(tmp_path / "toy.onnx", tile=16, batch=1))
    inside = [0, 0]  # now, most at once

    class Buffer:
        value = None

        def numpy(self):
            return self.value

    class Binding:  # what ONNX Runtime's IoBinding does, slowly: the output buffer is shared
        bound = None

        def bind_ortvalue_input(self, name, value):
            self.bound = value

        def run(self):
            inside[0] += 1
            inside[1] = max(inside)
            time.sleep(0.01)
            backend._device_out.value = self.bound * 2
            inside[0] -= 1

    binding = Binding()
    backend._binding, backend._device_out = binding, Buffer()
    monkeypatch.setattr(backend, "session", type("S", (), {"run_with_iobinding": lambda self, b: b.run()})())
    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", staticmethod(lambda array, *a: array))
    tiles = [np.full((1, 3, 16, 16), k, np.float32) for k in range(16)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(backend.infer, tiles))
    assert [float(r.max()) for r in results] == [2.0 * k for k in range(16)] and inside[1] == 1
