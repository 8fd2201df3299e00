"""The base install, for real: a fresh virtual environment, ``pip install <repo>`` without extras, then the
``hrx`` command upscales a photo with the bundled default model. No PyTorch (nor onnx) is installed, and
an import hook in the environment's ``sitecustomize`` records any attempt to import them: there must be
none. Needs pip's index or its cache for the base wheels (onnxruntime, openvino, ...); ~30-60 s."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
OPTIONAL = ("torch", "onnx", "onnxscript", "onnxsim", "onnxslim", "polygraphy", "safetensors", "skimage")
HOOK = f'''import os, sys
_OPTIONAL = {OPTIONAL!r}


class _RecordOptional:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _OPTIONAL:
            with open(os.environ["HRX_IMPORT_LOG"], "a") as f:
                f.write(name + "\\n")
        return None


if os.environ.get("HRX_IMPORT_LOG"):
    sys.meta_path.insert(0, _RecordOptional())
'''
SKIP = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                              "out", "samples", "benchmarks")


def _site_packages(venv: Path) -> Path:
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    return Path(purelib)


@pytest.mark.slow
def test_base_install_upscales_a_photo_without_torch(tmp_path):
    from skimage import data

    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=SKIP)  # the working tree, without venvs and build folders
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-compile",
                        "--disable-pip-version-check", str(src)], capture_output=True, text=True)
    assert r.returncode == 0, f"pip install of the base tier failed:\n{r.stderr[-3000:]}"
    site = _site_packages(venv)
    installed = {p.name.split("-")[0].lower() for p in site.glob("*.dist-info")}
    assert {"onnxruntime", "openvino", "pillow", "hrx"} <= installed, sorted(installed)
    assert not installed & {"torch", "onnx", "onnxscript", "safetensors", "scikit_image"}, sorted(installed)
    (site / "sitecustomize.py").write_text(HOOK)

    photo = Image.fromarray(data.astronaut()[40:120, 150:250])  # 100 x 80: a face, hair and background
    photo.save(tmp_path / "photo.png")
    log = tmp_path / "imports.log"
    env = {**os.environ, "HRX_IMPORT_LOG": str(log), "HRX_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("PYTHONPATH", None)
    r = subprocess.run([str(venv / "bin" / "hrx"), "upscale", str(tmp_path / "photo.png"), "-o", str(tmp_path / "out")],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "bundled default-x4" in r.stderr
    assert not log.exists(), f"the upscale path tried to import: {sorted(set(log.read_text().split()))}"

    with Image.open(tmp_path / "out" / "photo.png") as out:
        assert out.size == (400, 320)
        got = np.asarray(out.convert("RGB"), dtype=np.float64)
    bicubic = np.asarray(photo.resize((400, 320), Image.Resampling.BICUBIC), dtype=np.float64)
    assert np.abs(got - bicubic).mean() > 1.0, "the output is a plain bicubic upscale"
    # the same photo through the shipped ONNX file on ONNX Runtime FP32 in this process
    from hrx.cli.main import app
    from typer.testing import CliRunner

    ref = CliRunner().invoke(app, ["upscale", str(tmp_path / "photo.png"), "-o", str(tmp_path / "ref"), "-q",
                                   "--backend", "onnxrt-cpu"])
    assert ref.exit_code == 0, ref.output
    with Image.open(tmp_path / "ref" / "photo.png") as ref_image:
        want = np.asarray(ref_image.convert("RGB"), dtype=np.float64)
    psnr = 10 * np.log10(255.0 ** 2 / max(float(np.mean((got - want) ** 2)), 1e-12))
    assert psnr >= 45.0, f"the base install's default path is {psnr:.1f} dB from ONNX Runtime FP32"
