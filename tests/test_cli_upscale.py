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
from runtime_support import write_toy

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
    assert "backend: openvino" in result.stderr
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
    assert (data["done"], data["failed"], data["skipped"]) == (11, 1, 0)
    assert data["backend"].startswith("openvino")  # the default on the CPU; " x2 (cpu:0, cpu:1)" with 2 cores: one session per core
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


def _gradient16(h: int, w: int) -> np.ndarray:
    """A smooth 16-bit RGB gradient with a distinct value at every pixel (raster ramps, three directions)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = (y * w + x) / (h * w - 1)
    rgb = np.stack([0.1 + 0.8 * ramp, 0.9 - 0.8 * ramp, 0.3 + 0.4 * ((x * h + y) / (h * w - 1))], -1)
    return np.rint(rgb * 65535).astype(np.uint16)


def test_sixteen_bit_png_round_trips_through_upscale_without_banding(tmp_path):
    import imagecodecs

    from runtime_support import toy_whole

    src = _gradient16(40, 56)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "g.png").write_bytes(imagecodecs.png_encode(src))
    engine = write_toy(tmp_path / "toy.onnx", tile=16, batch=2)
    result = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-e", str(engine),
                                 "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    out = imagecodecs.png_decode((tmp_path / "out" / "g.png").read_bytes())
    assert out.dtype == np.uint16 and out.shape == (80, 112, 3)
    levels = [len(np.unique(out[..., c])) for c in range(3)]
    assert min(levels) > 2000, levels  # an 8-bit detour has at most 256 per channel
    reference = toy_whole(src.transpose(2, 0, 1)[None].astype(np.float32) / 65535)[0].transpose(1, 2, 0)
    error = np.abs(out / 65535.0 - np.clip(reference, 0, 1))
    assert error.max() < 1 / 255 / 20 and error.mean() < 1e-5, (error.max(), error.mean())
    eight_bit = np.abs(np.rint(np.clip(reference, 0, 1) * 255) / 255 - np.clip(reference, 0, 1)).mean()
    assert error.mean() < eight_bit / 50  # far below what 8 bits could do
    image = json.loads((tmp_path / "r.json").read_text())["images"][0]
    assert image["bits"] == 16 and image["scale"] == 2 and image["model_scale"] == 2


def test_sixteen_bit_to_jpeg_warns_once(tmp_path):
    import imagecodecs

    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        (tmp_path / "in" / f"{name}.png").write_bytes(imagecodecs.png_encode(_gradient16(12, 16)))
    _photo(12, 16).save(tmp_path / "in" / "c.png")
    engine = write_toy(tmp_path / "toy.onnx", tile=16, batch=2)
    result = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-e", str(engine),
                                 "--format", "jpeg", "-q", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert [line for line in result.stderr.splitlines() if line.startswith("warning:")] == [
        "warning: 16-bit inputs are written with 8 bits per channel: --format jpeg holds no more (png or tiff keep 16)"]
    with Image.open(tmp_path / "out" / "a.jpg") as im:
        assert im.mode == "RGB"
    quiet = runner.invoke(app, ["upscale", str(tmp_path / "in" / "c.png"), "-o", str(tmp_path / "out8"),
                                "-e", str(engine), "--format", "jpeg", "-q"])
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr  # 8-bit input: nothing lost, no warning
    with Image.open(tmp_path / "out8" / "c.jpg") as im:
        assert im.mode == "RGB"


def test_outscale_width_height_exact_sizes(tmp_path):
    _photo(20, 30).save(tmp_path / "a.png")  # 30 wide, 20 high
    engine = write_toy(tmp_path / "toy4.onnx", tile=16, batch=1, scale=4)
    cases = [  # flags -> (width, height), scale recorded, model scale (0: skipped), resample
        (["--outscale", "1.5"], (45, 30), 1.5, 4, "area"),
        (["--outscale", "3.5"], (105, 70), 3.5, 4, "area"),
        (["--outscale", "5"], (150, 100), 5.0, 4, "lanczos"),
        (["--outscale", "4"], (120, 80), 4.0, 4, ""),
        (["--outscale", "0.5"], (15, 10), 0.5, 0, "area"),
        (["--outscale", "1"], (30, 20), 1.0, 0, ""),
        (["--width", "100"], (100, 67), 3.333333, 4, "area"),
        (["--height", "50"], (75, 50), 2.5, 4, "area"),
        (["--width", "100", "--height", "40"], (60, 40), 2.0, 4, "area"),
    ]
    for k, (flags, size, scale, model_scale, resample) in enumerate(cases):
        out = tmp_path / f"out{k}"
        result = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), "-o", str(out), "-e", str(engine), "-q",
                                     "--json", str(tmp_path / f"r{k}.json")] + flags)
        assert result.exit_code == 0, (flags, result.output)
        with Image.open(out / "a.png") as im:
            assert im.size == size, flags
        image = json.loads((tmp_path / f"r{k}.json").read_text())["images"][0]
        assert (image["scale"], image["model_scale"], image["resample"]) == (scale, model_scale, resample), flags
    clash = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "x"), "-e", str(engine),
                                "--outscale", "2", "--width", "10"])
    assert clash.exit_code == 1 and "not both" in clash.stderr


def test_outscale_resamples_the_model_output(tmp_path):
    """--outscale 1.5 with an x4 model is the x4 output shrunk by area averaging (not a plain resize of the input)."""
    from hrx.runtime.picture import resample_planes

    arr = RNG.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    engine = write_toy(tmp_path / "toy4.onnx", tile=16, batch=1, scale=4)
    for flags, name in (([], "x4"), (["--outscale", "1.5"], "x15")):
        result = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / name), "-e", str(engine),
                                     "-q"] + flags)
        assert result.exit_code == 0, result.output
    x4 = np.asarray(Image.open(tmp_path / "x4" / "a.png"), np.float32).transpose(2, 0, 1) / 255
    expected, how = resample_planes(x4, (36, 24))
    got = np.asarray(Image.open(tmp_path / "x15" / "a.png"), np.float32).transpose(2, 0, 1) / 255
    assert how == "area" and got.shape == (3, 24, 36)
    assert np.abs(got - np.clip(expected, 0, 1)).max() <= 1.5 / 255  # the x4 file was rounded to 8 bits first


def test_png_level_option_changes_size_not_pixels(tmp_path):
    """--png-level 0 and 9 write the same pixels (8-bit PNG), in files of different sizes; --help says so."""
    (tmp_path / "in").mkdir()
    y, x = np.mgrid[0:40, 0:56]
    Image.fromarray(np.stack([x * 4, y * 5, x + y], -1).astype(np.uint8)).save(tmp_path / "in" / "a.png")
    engine = write_toy(tmp_path / "toy.onnx", tile=16, batch=2)
    outputs = {}
    for level in ("0", "9"):
        result = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / level), "-e", str(engine),
                                     "--png-level", level, "-q"])
        assert result.exit_code == 0, result.output
        outputs[level] = tmp_path / level / "a.png"
    with Image.open(outputs["0"]) as a, Image.open(outputs["9"]) as b:
        assert a.size == (112, 80) and np.array_equal(np.asarray(a), np.asarray(b))
    assert outputs["0"].stat().st_size > outputs["9"].stat().st_size
    assert runner.invoke(app, ["upscale", "a.png", "-o", "out", "--png-level", "10"]).exit_code == 2
    help_text = " ".join(runner.invoke(app, ["upscale", "--help"]).output.replace("│", " ").split())
    assert "--png-level" in help_text and "the pixels are the same" in help_text


def test_openvino_upscale_imports_no_torch_onnx_spandrel_or_onnxruntime(tmp_path):
    """The base path (an .onnx on OpenVINO, CPU) in a fresh process: none of the heavy optional packages
    it does not use is imported, ONNX Runtime included (no CUDA provider: nothing to ask it)."""
    engine = write_toy(tmp_path / "toy.onnx", tile=16, batch=2)
    _photo(20, 30).save(tmp_path / "a.png")
    code = ("import sys\nfrom hrx.cli.main import app\n"
            f"app(['upscale', {str(tmp_path / 'a.png')!r}, '-o', {str(tmp_path / 'out')!r}, '-e', {str(engine)!r}, "
            "'-q'], standalone_mode=False)\n"
            "print(sorted(m for m in ('torch', 'onnx', 'spandrel', 'onnxruntime', 'tensorrt') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "out" / "a.png").is_file()


def test_cuda_provider_looked_up_without_importing_onnxruntime(tmp_path, monkeypatch):
    import importlib.machinery
    import importlib.util

    from hrx.runtime import onnxrt

    package = tmp_path / "onnxruntime"
    (package / "capi").mkdir(parents=True)
    spec = importlib.machinery.ModuleSpec("onnxruntime", None, is_package=True)
    spec.submodule_search_locations = [str(package)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    assert not onnxrt._cuda_provider_library()
    (package / "capi" / "libonnxruntime_providers_cuda.so").write_bytes(b"")
    assert onnxrt._cuda_provider_library()
