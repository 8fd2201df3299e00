"""A command whose pip extra is missing says which one to install, on one line, with exit code 2; the
base install's commands (upscale with an .onnx or the bundled model, models) need none.

Missing modules are simulated with an import hook that refuses them (so ``find_spec`` and ``import``
both fail, as in an install without them). tests/test_base_install.py runs a real base install."""
from __future__ import annotations

import sys

import pytest
from PIL import Image
from typer.testing import CliRunner

from hrx.cli.main import app
from hrx.extras import EXTRAS, MODULE_EXTRAS, NAMES, from_import_error

runner = CliRunner()
OPTIONAL = ("torch", "onnx", "onnxscript", "onnxsim", "onnxslim", "polygraphy", "onnxconverter_common",
            "safetensors", "skimage", "spandrel", "tensorrt", "ray", "tritonclient")


class _Refuse:
    """A meta-path finder that makes ``modules`` look uninstalled and records who asked for them."""

    def __init__(self, modules: tuple[str, ...]) -> None:
        self.modules, self.asked = modules, []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.modules:
            self.asked.append(name)
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@pytest.fixture
def base_install(monkeypatch):
    """Only the base install's modules: the optional ones are refused (and any already imported hidden)."""
    refuse = _Refuse(OPTIONAL)
    for name in list(sys.modules):
        if name.split(".")[0] in OPTIONAL:
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [refuse, *sys.meta_path])
    return refuse


@pytest.mark.parametrize("args, line", [
    (["export", "default-x2", "-o", "{tmp}/m.onnx"], "hrx export needs PyTorch: pip install 'hrx[export]'"),
    (["verify", "{tmp}/m.onnx", "-c", "default-x2"], "hrx verify needs PyTorch: pip install 'hrx[export]'"),
    (["calibrate", "{tmp}/m.onnx"], "hrx calibrate needs PyTorch: pip install 'hrx[calibrate]'"),
    (["train", "-o", "{tmp}/t.pt"], "hrx train needs PyTorch: pip install 'hrx[train]'"),
    (["new", "hrx-t", "-o", "{tmp}/n.pt"], "hrx new needs PyTorch: pip install 'hrx[export]'"),
    (["upscale", "{tmp}/a.png", "-o", "{tmp}/out", "--model", "default-x2"],
     "hrx upscale --model (the PyTorch backend) needs PyTorch: pip install 'hrx[export]'"),
    (["triton-repo", "{tmp}/m.onnx", "-o", "{tmp}/repo"], "hrx triton-repo needs onnx: pip install 'hrx[triton]'"),
    (["build", "{tmp}/m.onnx", "-o", "{tmp}/m.engine"], "hrx build needs onnx: pip install 'hrx[tensorrt]'"),
])
def test_a_missing_extra_is_one_line_and_exit_2(base_install, tmp_path, args, line):
    Image.new("RGB", (8, 8), (90, 120, 40)).save(tmp_path / "a.png")
    (tmp_path / "m.onnx").write_bytes(b"")
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [f"error: {line}"]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.png", "m.onnx"], "nothing written"


def test_base_install_upscales_with_the_bundled_model_and_lists_it(base_install, tmp_path):
    Image.new("RGB", (24, 20), (90, 120, 40)).save(tmp_path / "a.png")
    result = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "-q",
                                 "--backend", "onnxrt-cpu"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out" / "a.png") as out:
        assert out.size == (96, 80)
    assert base_install.asked == [], "the upscale path looked for an optional module"
    result = runner.invoke(app, ["models"])  # looks torch up (find_spec), imports none of it
    assert result.exit_code == 0, result.output
    assert "default-x4   hrx-s, x4, tile 128" in result.stdout
    assert "need PyTorch: pip install 'hrx[export]'" in result.stdout


def test_extras_tables_agree():
    assert set(MODULE_EXTRAS) <= set(NAMES)
    for extra, modules in EXTRAS.items():
        assert all(m in NAMES for m in modules), extra
    for module, extra in MODULE_EXTRAS.items():
        assert extra in EXTRAS, module


def test_only_optional_modules_become_the_extra_line():
    missing = from_import_error(ModuleNotFoundError("No module named 'torch.nn'", name="torch.nn"), "hrx export")
    assert str(missing) == "hrx export needs PyTorch: pip install 'hrx[export]'"
    named = from_import_error(ModuleNotFoundError("x", name="ray"), "hrx upscale", extra="export")
    assert str(named) == "hrx upscale needs Ray Data: pip install 'hrx[ray]'"  # not the command's own extra
    assert from_import_error(ModuleNotFoundError("x", name="hrx.nonexistent"), "hrx export") is None
    assert from_import_error(ImportError("cannot import name 'x'", name="torch"), "hrx export") is None
