"""Backend selection: which files and flags open which backend, and the errors for the rest."""
from __future__ import annotations

import pytest
import torch

import hrx
from hrx.errors import HRXError, MissingDependencyError
from hrx.runtime.factory import BackendRequest, open_backend
from runtime_support import write_toy


def _tensorrt_usable() -> bool:
    try:
        from hrx.runtime.trt.env import missing_for_tensorrt

        return missing_for_tensorrt(True) is None
    except Exception:  # noqa: BLE001 - the TensorRT layer itself missing counts as unusable
        return False


def test_both_given():
    with pytest.raises(HRXError, match="either --engine or --model"):
        open_backend(BackendRequest(engine="a.onnx", model="b.pt"))


def test_onnx_auto_is_openvino_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("HRX_CACHE_DIR", str(tmp_path / "cache"))
    path = write_toy(tmp_path / "toy.onnx")
    backend = open_backend(BackendRequest(engine=path))
    assert backend.name in ("openvino", "onnxrt-cuda")
    assert open_backend(BackendRequest(engine=path, backend="onnxrt-cpu")).name == "onnxrt-cpu"
    with pytest.raises(HRXError, match="--backend torch cannot run an ONNX file"):
        open_backend(BackendRequest(engine=path, backend="torch"))
    with pytest.raises(HRXError, match="--tile and --batch apply to --model only"):
        open_backend(BackendRequest(engine=path, tile=64))


def test_bad_engine_paths(tmp_path):
    with pytest.raises(HRXError, match="no such engine file"):
        open_backend(BackendRequest(engine=tmp_path / "missing.onnx"))
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(HRXError, match="unknown engine type .bin"):
        open_backend(BackendRequest(engine=tmp_path / "model.bin"))
    (tmp_path / "model.engine").write_bytes(b"x")
    with pytest.raises(HRXError, match="runs only with --backend trt"):
        open_backend(BackendRequest(engine=tmp_path / "model.engine", backend="onnxrt-cpu"))


@pytest.mark.skipif(_tensorrt_usable(), reason="TensorRT is usable here")
def test_engine_without_tensorrt_is_missing_dependency(tmp_path):
    (tmp_path / "model.plan").write_bytes(b"not an engine")
    with pytest.raises(MissingDependencyError) as e:
        open_backend(BackendRequest(engine=tmp_path / "model.plan"))
    assert e.value.exit_code == 2


def test_checkpoint_opens_torch(tmp_path):
    torch.manual_seed(0)
    ckpt = hrx.save_model(hrx.create_model("hrx-t", scale=2), tmp_path / "m.pt")
    backend = open_backend(BackendRequest(model=str(ckpt), tile=40, batch=2))
    assert backend.name == "torch"
    assert (backend.info.tile, backend.info.batch, backend.info.size_multiple) == (48, 2, 16)  # 40 rounded up
    assert backend.infer(torch.rand(2, 3, 48, 48).numpy()).shape == (2, 3, 96, 96)
    with pytest.raises(HRXError, match="needs an engine file"):
        open_backend(BackendRequest(model=str(ckpt), backend="onnxrt-cpu"))
    with pytest.raises(HRXError, match="no such checkpoint file or bundled model"):
        open_backend(BackendRequest(model=str(tmp_path / "nope.pt")))
