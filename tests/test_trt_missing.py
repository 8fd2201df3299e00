"""Without TensorRT or a CUDA GPU: one line, the extra to install, exit code 2, no file left behind."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import onnx
import pytest
import typer
from onnx import TensorProto, helper
from typer.testing import CliRunner

from hrx.errors import HRXError, MissingDependencyError
from hrx.runtime.trt import env

NOT_INSTALLED = "TensorRT is not installed (install it with pip install 'hrx[tensorrt]')"
HINT = "pip install 'hrx[tensorrt]'"


@pytest.fixture
def no_tensorrt(monkeypatch):
    """TensorRT absent, whatever this machine has."""
    monkeypatch.setattr(env, "tensorrt_problem", lambda: NOT_INSTALLED)


@pytest.fixture
def app() -> typer.Typer:
    from hrx.cli.build import build

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("build")(build)

    @app.callback()
    def _root() -> None:
        pass

    return app


@pytest.fixture
def relu_onnx(tmp_path):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 8, 8])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    return path


def _one_error_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("error: ") and "Traceback" not in output
    return lines[0]


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_this_machine_reports_tensorrt_missing():
    assert env.tensorrt_problem() == NOT_INSTALLED
    assert env.tensorrt_version() is None
    with pytest.raises(MissingDependencyError) as e:
        env.require_tensorrt()
    assert HINT in str(e.value) and e.value.exit_code == 2


def test_a_broken_install_is_reported_as_such(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "tensorrt" else real(name, *a))

    def broken():
        raise OSError("libnvinfer.so.10: cannot open shared object file")

    monkeypatch.setattr(env, "_import_tensorrt", broken)
    reason = env.tensorrt_problem()
    assert "cannot be loaded (libnvinfer.so.10" in reason and HINT in reason


def test_missing_gpu_is_named(monkeypatch):
    monkeypatch.setattr(env, "tensorrt_problem", lambda: None)
    monkeypatch.setattr(env, "gpu_info", lambda: None)
    monkeypatch.setattr(env, "torch_cuda_problem", lambda: "no CUDA GPU is visible (check the NVIDIA driver)")
    with pytest.raises(MissingDependencyError, match="no CUDA GPU is visible"):
        env.require_tensorrt(what="hrx build")


def test_cli_build_without_tensorrt_exits_2_with_one_line(app, no_tensorrt, relu_onnx, tmp_path):
    engine = tmp_path / "out.engine"
    before = sorted(tmp_path.iterdir())
    result = CliRunner().invoke(app, ["build", str(relu_onnx), "--fp16", "-o", str(engine),
                                      "--timing-cache", str(tmp_path / "timing.cache")])
    assert result.exit_code == 2
    line = _one_error_line(result.output)
    assert "TensorRT is not installed" in line and HINT in line
    assert sorted(tmp_path.iterdir()) == before, "no engine, record or timing cache left behind"


def test_cli_build_default_output_is_not_created_either(app, no_tensorrt, relu_onnx):
    result = CliRunner().invoke(app, ["build", str(relu_onnx)])
    assert result.exit_code == 2
    assert not relu_onnx.with_suffix(".engine").exists()
    assert not relu_onnx.with_suffix(".engine.json").exists()


def test_cli_build_missing_or_invalid_onnx_is_one_line(app, tmp_path):
    result = CliRunner().invoke(app, ["build", str(tmp_path / "nope.onnx")])
    assert result.exit_code == 1 and "no such ONNX file" in _one_error_line(result.output)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    result = CliRunner().invoke(app, ["build", str(bad), "-o", str(tmp_path / "bad.engine")])
    assert result.exit_code == 1 and "not a readable ONNX file" in _one_error_line(result.output)
    assert not (tmp_path / "bad.engine").exists()


def test_cli_int8_needs_a_qdq_model(app, relu_onnx):
    result = CliRunner().invoke(app, ["build", str(relu_onnx), "--int8"])
    assert result.exit_code == 1 and "hrx calibrate" in _one_error_line(result.output)


def test_build_engine_without_tensorrt(no_tensorrt, relu_onnx, tmp_path):
    from hrx.runtime.trt import build_engine

    with pytest.raises(MissingDependencyError, match="hrx build is unavailable"):
        build_engine(relu_onnx, tmp_path / "x.engine", fp16=True)
    assert not (tmp_path / "x.engine").exists()


def test_backend_constructor_without_tensorrt(no_tensorrt, tmp_path):
    from hrx.runtime.trt import TensorRTBackend

    with pytest.raises(MissingDependencyError) as e:
        TensorRTBackend(tmp_path / "m.engine")
    assert HINT in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(MissingDependencyError):
        TensorRTBackend.from_onnx(tmp_path / "m.onnx")


def test_polygraphy_runner_without_tensorrt(no_tensorrt, relu_onnx):
    from hrx.runtime.trt import polygraphy_runner

    with pytest.raises(MissingDependencyError, match=r"hrx verify --backends trt is unavailable"):
        polygraphy_runner(relu_onnx, "fp16")


def test_engine_cache_without_tensorrt(no_tensorrt, relu_onnx):
    from hrx.runtime.trt import cached_engine_for

    with pytest.raises(MissingDependencyError):
        cached_engine_for(relu_onnx, "fp16")


def test_importing_the_package_loads_no_tensorrt_or_triton():
    code = ("import sys\n"
            "import hrx.runtime.trt, hrx.runtime.trt.builder, hrx.runtime.trt.backend, hrx.runtime.trt.cache\n"
            "import hrx.runtime.trt.kernels, hrx.runtime.trt.plugins, hrx.runtime.trt.runner, hrx.runtime.trt.ops\n"
            "import hrx.cli.build\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'triton', 'cuda', 'cupy'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_hrx_help_lists_build_without_tensorrt():
    from hrx.cli.main import app as main_app

    result = CliRunner().invoke(main_app, ["--help"])
    assert result.exit_code == 0 and "build" in result.output
    result = CliRunner().invoke(main_app, ["build", "--help"])
    assert result.exit_code == 0 and "--timing-cache" in result.output and "hrx[tensorrt]" in result.output


def test_unknown_precision_is_a_user_error():
    from hrx.export.onnx_tools import normalize_precision

    assert normalize_precision("int8-qdq") == "int8" and normalize_precision("FP16") == "fp16"
    with pytest.raises(HRXError, match="unknown precision"):
        normalize_precision("fp8")
