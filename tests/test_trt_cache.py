"""Engine records, mismatch messages and cache keys (simulated machines; no TensorRT)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hrx.errors import HRXError
from hrx.interface import ModelInfo
from hrx.runtime.trt import cache
from hrx.runtime.trt.cache import EngineMismatchError, EngineRecord, RuntimeEnv
from hrx.runtime.trt.env import GpuInfo

H100 = GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
H100_PCIE = GpuInfo("NVIDIA H100 PCIe", "9.0")
A100 = GpuInfo("NVIDIA A100-SXM4-80GB", "8.0")
HERE = RuntimeEnv("10.7.0", H100)


def _info() -> ModelInfo:
    return ModelInfo(arch="hrx-t", scale=2, in_channels=3, out_channels=3, tile=32, batch=1, size_multiple=16,
                     tile_overlap=8, ops="plugin", opset=18)


@pytest.fixture
def engine(tmp_path) -> tuple[Path, Path, EngineRecord]:
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"onnx bytes")
    engine_path = tmp_path / "m.engine"
    engine_path.write_bytes(b"engine bytes")
    record = EngineRecord(
        onnx_sha256=cache.file_sha256(onnx_path), onnx_path=str(onnx_path), precision="fp16",
        tensorrt_version="10.7.0", gpu_name=H100.name, compute_capability="9.0", input_name="input",
        input_shape=[1, 3, 32, 32], output_name="output", output_shape=[1, 3, 64, 64],
        model_info=_info().to_props(), plugins=["hrx::MoETop1", "hrx::SelectiveScan"], plugin_impl="jit",
        fp32_islands={"softmax": 2}, hrx_version="0.1.0", built_at=cache.now_iso())
    cache.write_record(engine_path, record)
    return onnx_path, engine_path, record


def test_record_round_trip(engine):
    _, engine_path, record = engine
    side = cache.sidecar_path(engine_path)
    assert side.name == "m.engine.json" and side.is_file()
    assert cache.read_record(engine_path) == record
    assert json.loads(side.read_text())["schema"] == cache.RECORD_SCHEMA
    assert record.info() == _info()  # the runtime tiles with the engine alone


def test_matching_engine_passes(engine):
    onnx_path, engine_path, record = engine
    got, warnings = cache.check_engine(engine_path, env=HERE, onnx_path=onnx_path)
    assert got == record and warnings == []


def test_other_tensorrt_version_says_why_and_how_to_rebuild(engine):
    onnx_path, engine_path, _ = engine
    with pytest.raises(EngineMismatchError) as e:
        cache.check_engine(engine_path, env=RuntimeEnv("10.8.0", H100))
    msg = str(e.value)
    assert "TensorRT 10.7.0" in msg and "TensorRT 10.8.0 is installed" in msg
    assert f"hrx build {onnx_path} --fp16 -o {engine_path}" in msg
    assert "\n" not in msg


def test_other_gpu_architecture_says_why_and_how_to_rebuild(engine):
    onnx_path, engine_path, _ = engine
    with pytest.raises(EngineMismatchError) as e:
        cache.check_engine(engine_path, env=RuntimeEnv("10.7.0", A100))
    msg = str(e.value)
    assert "compute capability 9.0" in msg and A100.name in msg and "(8.0)" in msg
    assert f"Rebuild it: hrx build {onnx_path} --fp16 -o {engine_path}" in msg


def test_both_mismatches_are_reported_together(engine):
    _, engine_path, _ = engine
    with pytest.raises(EngineMismatchError) as e:
        cache.check_engine(engine_path, env=RuntimeEnv("10.9.0", A100))
    assert "TensorRT 10.9.0" in str(e.value) and A100.name in str(e.value)


def test_same_architecture_other_gpu_is_a_warning(engine):
    _, engine_path, _ = engine
    _, warnings = cache.check_engine(engine_path, env=RuntimeEnv("10.7.0", H100_PCIE))
    assert len(warnings) == 1 and "same compute capability 9.0" in warnings[0] and H100_PCIE.name in warnings[0]


def test_changed_onnx_makes_the_engine_stale(engine):
    onnx_path, engine_path, record = engine
    onnx_path.write_bytes(b"re-exported onnx bytes")
    with pytest.raises(EngineMismatchError) as e:
        cache.check_engine(engine_path, env=HERE, onnx_path=onnx_path)
    msg = str(e.value)
    assert "changed since the engine was built" in msg and record.onnx_sha256[:12] in msg
    assert f"hrx build {onnx_path} --fp16" in msg


def test_rebuild_command_keeps_precision_and_plugin_impl():
    assert cache.rebuild_command("m.onnx", "fp32", "m.engine") == "hrx build m.onnx -o m.engine"
    assert cache.rebuild_command("m.onnx", "int8") == "hrx build m.onnx --int8"
    want = "hrx build MODEL.onnx --bf16 --plugin-impl aot -o x.plan"
    assert cache.rebuild_command(None, "bf16", "x.plan", "aot") == want


def test_missing_or_broken_record(tmp_path):
    engine_path = tmp_path / "old.engine"
    engine_path.write_bytes(b"x")
    with pytest.raises(HRXError, match="no build record"):
        cache.check_engine(engine_path, env=HERE)
    cache.sidecar_path(engine_path).write_text("{not json")
    with pytest.raises(HRXError, match="not valid JSON"):
        cache.read_record(engine_path)
    cache.sidecar_path(engine_path).write_text(json.dumps({"precision": "fp16"}))
    with pytest.raises(HRXError, match="lacks"):
        cache.read_record(engine_path)
    with pytest.raises(HRXError, match="no such engine"):
        cache.check_engine(tmp_path / "nope.engine", env=HERE)


def test_cache_key_separates_model_precision_tensorrt_and_gpu(tmp_path):
    key = cache.cache_key("ab" * 32, "fp16", HERE)
    assert key == "abababababababab-fp16-trt10.7.0-nvidia-h100-80gb-hbm3-sm90"
    others = {cache.cache_key("cd" * 32, "fp16", HERE), cache.cache_key("ab" * 32, "int8", HERE),
              cache.cache_key("ab" * 32, "fp16", RuntimeEnv("10.8.0", H100)),
              cache.cache_key("ab" * 32, "fp16", RuntimeEnv("10.7.0", A100)),
              cache.cache_key("ab" * 32, "fp16", HERE, plugin_impl="aot")}
    assert key not in others and len(others) == 5
    with pytest.raises(HRXError, match="unknown precision"):
        cache.cache_key("ab" * 32, "fp8", HERE)


def test_cached_engine_path_lives_in_the_user_cache(tmp_path, monkeypatch):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"abc")
    monkeypatch.setenv("HRX_CACHE_DIR", str(tmp_path / "cache"))
    path = cache.cached_engine_for(onnx_path, "fp16", env=HERE)
    assert path.parent == tmp_path / "cache" / "engines"
    assert path.name.startswith("model-" + cache.file_sha256(onnx_path)[:16]) and path.suffix == ".engine"
    assert cache.cached_engine_for(onnx_path, "fp16", env=HERE) == path  # stable
    onnx_path.write_bytes(b"abcd")
    assert cache.cached_engine_for(onnx_path, "fp16", env=HERE) != path  # new export, new engine
    monkeypatch.delenv("HRX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "hrx"


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.engine"

    def boom(*_args):
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(cache.os, "replace", boom)
        with pytest.raises(OSError, match="disk full"):
            cache.atomic_write_bytes(target, b"xx")
    assert list(tmp_path.iterdir()) == []
    cache.atomic_write_bytes(target, b"ok")
    assert target.read_bytes() == b"ok" and list(tmp_path.iterdir()) == [target]


def test_gpu_slug():
    assert H100.slug == "nvidia-h100-80gb-hbm3"
    assert GpuInfo("  ", "8.6").slug == "gpu"
