"""scripts/gpu_check.sh cannot run without a GPU: here it is parsed by bash, and its CPU-side helper
(scripts/compare_images.py, the PSNR check of `hrx upscale --backend trt` against ONNX Runtime CPU) is run
on images that pass and images that must fail."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_parses():
    res = subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def _compare(a: Path, b: Path, min_psnr: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_images.py"), str(a), str(b),
                           "--min-psnr", str(min_psnr)], capture_output=True, text=True, cwd=ROOT)


def test_compare_images_passes_close_images_and_fails_far_ones(tmp_path):
    rng = np.random.default_rng(0)
    img = (rng.random((24, 32, 3)) * 255).astype(np.uint8)
    for name, folder in (("a", img), ("b", np.clip(img.astype(int) + 1, 0, 255).astype(np.uint8)),
                         ("zero", np.zeros_like(img))):
        (tmp_path / name).mkdir()
        Image.fromarray(folder).save(tmp_path / name / "x.png")
    near = _compare(tmp_path / "a", tmp_path / "b", 40)  # one level off everywhere: 48.1 dB
    assert near.returncode == 0, near.stdout + near.stderr
    assert "PSNR min 48.1" in near.stdout and "over 1 images" in near.stdout
    far = _compare(tmp_path / "a", tmp_path / "zero", 40)  # far apart, as a broken engine gives
    assert far.returncode == 1 and "PSNR min" in far.stdout
    (tmp_path / "a" / "y.png").write_bytes((tmp_path / "a" / "x.png").read_bytes())
    missing = _compare(tmp_path / "a", tmp_path / "b", 40)
    assert missing.returncode == 1 and "y.png: missing" in missing.stderr
