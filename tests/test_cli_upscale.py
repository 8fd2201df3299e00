"""``hrx upscale`` end to end on the CPU: modes, sizes, EXIF, broken files, exit codes, resume, JSON."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import torch
from PIL import Image, ImageCms
from typer.testing import CliRunner

import hrx
from hrx.cli.main import app
from test_runtime_support import write_toy

runner = CliRunner()
RNG = np.random.default_rng(0)


def _photo(h: int, w: int) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _inputs(root):
    root.mkdir()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    _photo(20, 30).save(root / "rgb.jpg", icc_profile=icc)
    _photo(20, 30).convert("RGBA").save(root / "rgba.png")
    _photo(20, 30).convert("L").save(root / "gray.png")
    _photo(20, 30).save(root / "web.webp", lossless=True)
    _photo(20, 30).convert("P").save(root / "palette.bmp")
    _photo(20, 30).convert("CMYK").save(root / "cmyk.tif")
    Image.fromarray((np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)).save(root / "deep.png")
    _photo(1, 1).save(root / "dot.png")
    _photo(3, 517).save(root / "strip.png")
    rotated = _photo(10, 30)
    exif = rotated.getexif()
    exif[0x0112] = 8  # displayed rotated 90 degrees counter-clockwise
    rotated.save(root / "phone.jpg", exif=exif.tobytes())
    (root / "sub").mkdir()
    _photo(20, 30).save(root / "sub" / "nested.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")


def test_folder_end_to_end(tmp_path):
    _inputs(tmp_path / "in")
    engine = write_toy(tmp_path / "toy.onnx", tile=16, batch=2)
    report = tmp_path / "report.json"
    result = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-r", "-o", str(tmp_path / "out"),
                                 "--engine", str(engine), "--json", str(report)])
    assert result.exit_code == 1, result.output
    assert "backend: onnxrt-cpu" in result.stderr
    assert f"error: {tmp_path / 'in' / 'broken.png'}: " in result.stderr
    assert "error: 1 of 12 images failed" in result.stderr
    out = tmp_path / "out"
    expect = {"rgb.png": ("RGB", (60, 40)), "rgba.png": ("RGBA", (60, 40)), "gray.png": ("L", (60, 40)), "web.png": ("RGB", (60, 40)),
              "palette.png": ("RGB", (60, 40)), "cmyk.png": ("RGB", (60, 40)), "deep.png": ("I;16", (60, 40)),
              "dot.png": ("RGB", (2, 2)), "strip.png": ("RGB", (1034, 6)), "phone.png": ("RGB", (20, 60)),
              "sub/nested.png": ("RGB", (60, 40))}
    for rel, (mode, size) in expect.items():
        with Image.open(out / rel) as im:
            assert (im.mode, im.size) == (mode, size), rel
    with Image.open(out / "rgb.png") as im:
        assert im.info.get("icc_profile")
    assert not (out / "broken.png").exists() and not list(tmp_path.rglob("*.tmp"))
    data = json.loads(report.read_text())
    assert (data["done"], data["failed"], data["skipped"], data["backend"]) == (11, 1, 0, "onnxrt-cpu")
    assert data["input_megapixels_per_second"] > 0 and len(data["images"]) == 12

    # resume: everything that exists is skipped; the broken file still fails
    again = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-r", "-o", str(out), "--engine", str(engine),
                                "--skip-existing", "--quiet", "--json", "-"])
    assert again.exit_code == 1
    data = json.loads(again.stdout)
    assert (data["done"], data["failed"], data["skipped"]) == (0, 1, 11)
    assert "backend:" not in again.stderr


def test_success_exit_code_and_formats(tmp_path):
    _photo(20, 30).convert("RGBA").save(tmp_path / "a.png")
    engine = write_toy(tmp_path / "toy.onnx")
    result = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "-e", str(engine),
                                 "--format", "jpeg", "--merge", "crop", "--alpha", "model"])
    assert result.exit_code == 0, result.output
    assert "1 done, 0 failed, 0 skipped" in result.stderr and "MP/s" in result.stderr
    with Image.open(tmp_path / "out" / "a.jpg") as im:
        assert (im.mode, im.size) == ("RGB", (60, 40))


def test_refuses_to_overwrite_inputs(tmp_path):
    _photo(8, 8).save(tmp_path / "a.png")
    engine = write_toy(tmp_path / "toy.onnx")
    before = (tmp_path / "a.png").read_bytes()
    result = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path), "-e", str(engine)])
    assert result.exit_code == 1 and "refusing to write over an input file" in result.stderr
    assert (tmp_path / "a.png").read_bytes() == before


def test_missing_inputs(tmp_path):
    _photo(8, 8).save(tmp_path / "a.png")
    engine = write_toy(tmp_path / "toy.onnx")
    result = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), str(tmp_path / "gone.png"),
                                 "-o", str(tmp_path / "out"), "-e", str(engine), "-q"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [f"error: {tmp_path / 'gone.png'}: no such file or folder",
                                          "error: 1 of 2 images failed"]
    assert (tmp_path / "out" / "a.png").is_file()


def test_checkpoint_runs_with_torch(tmp_path):
    torch.manual_seed(0)
    ckpt = hrx.save_model(hrx.create_model("hrx-t", scale=2), tmp_path / "m.pt")
    _photo(20, 30).save(tmp_path / "a.png")
    result = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"),
                                 "--model", str(ckpt), "--tile", "32", "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert "backend: torch" in result.stderr and "tile 32, batch 2" in result.stderr
    with Image.open(tmp_path / "out" / "a.png") as im:
        assert im.size == (60, 40)


def test_cli_import_stays_light():
    code = ("import sys, hrx.cli.main, hrx.runtime; "
            "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'tensorrt', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_inputs_and_output_folder_are_checked_before_any_model_work(tmp_path, monkeypatch):
    import hrx.runtime.factory as factory

    def no_model(*args, **kwargs):
        raise AssertionError("the backend was opened before the inputs were checked")

    monkeypatch.setattr(factory, "open_backend", no_model)
    monkeypatch.setattr(factory, "default_engine", no_model)
    result = runner.invoke(app, ["upscale", str(tmp_path / "missing"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path / 'missing'}: no such file or folder"]
    _photo(8, 8).save(tmp_path / "a.png")
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "file" / "out")])
    assert result.exit_code == 1 and "cannot create the output folder" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
