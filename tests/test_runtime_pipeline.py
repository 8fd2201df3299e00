"""Batch pipeline: planning outputs, channel mapping, failures that do not stop the batch, atomic writes,
resume, interruption."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hrx.errors import HRXError
from hrx.runtime.images import Picture, read_image
from hrx.interface import Backend, ModelInfo
from hrx.runtime.onnxrt import OnnxRuntimeBackend
from hrx.runtime.picture import upscale_picture
from hrx.runtime.pipeline import BatchOptions, plan_jobs, run_batch
from hrx.runtime.tiling import TileSpec
from runtime_support import write_toy

RNG = np.random.default_rng(0)


def _save(path, h=20, w=28, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode).save(path)
    return path


def _leftovers(root):
    return sorted(p.name for p in root.rglob("*.tmp"))


class NearestBackend(Backend):
    """A stand-in backend: nearest-neighbour x2 upscaling of static 8x8 tiles."""

    name = "nearest"

    def __init__(self, channels: int = 3, batch: int = 2) -> None:
        self.info = ModelInfo("nearest", 2, channels, channels, 8, batch, 4, 4)
        self.calls = 0

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        self.calls += 1
        return tiles.repeat(2, axis=2).repeat(2, axis=3)

    def close(self) -> None:
        pass


def _spec(backend) -> TileSpec:
    i = backend.info
    return TileSpec(i.tile, i.tile_overlap, i.scale, i.size_multiple, i.batch, "blend")


# -- planning ---------------------------------------------------------------------------------------

def test_plan_keeps_relative_paths_and_stems(tmp_path):
    src = tmp_path / "in"
    for rel in ("a.jpg", "b.PNG", "sub/c.webp", "sub/deep/d.tif", ".hidden.png", "notes.txt"):
        _save(src / rel) if rel.lower().endswith((".jpg", ".png", ".webp", ".tif")) else (src / rel).write_text("x")
    flat = plan_jobs([src], tmp_path / "out")
    assert [j.output.relative_to(tmp_path / "out").as_posix() for j in flat] == ["a.png", "b.png"]
    deep = plan_jobs([src], tmp_path / "out", "webp", recursive=True)
    assert [j.output.relative_to(tmp_path / "out").as_posix() for j in deep] == [
        "a.webp", "b.webp", "sub/c.webp", "sub/deep/d.webp"]
    one = plan_jobs([src / "sub" / "c.webp", tmp_path / "nope.png"], tmp_path / "out")
    assert [(j.output.name, j.error) for j in one] == [("c.png", None), ("nope.png", "no such file or folder")]
    twice = plan_jobs([src / "a.jpg", src], tmp_path / "out")  # a file and its folder: once
    assert [j.source.name for j in twice] == ["a.jpg", "b.PNG"]


def test_plan_refuses_collisions_and_overwriting_inputs(tmp_path):
    src = tmp_path / "in"
    _save(src / "x.jpg")
    _save(src / "x.png")
    with pytest.raises(HRXError, match="would both be written to"):
        plan_jobs([src], tmp_path / "out")
    with pytest.raises(HRXError, match="refusing to write over an input"):
        plan_jobs([src / "x.png"], src)
    plan_jobs([src / "x.jpg"], src, "webp")  # same folder, another name: fine
    (tmp_path / "nothing").mkdir()
    with pytest.raises(HRXError, match="no images found"):
        plan_jobs([tmp_path / "nothing"], tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(HRXError, match="not a folder"):
        plan_jobs([src / "x.jpg"], tmp_path / "file")


def test_plan_skips_output_folder_inside_input(tmp_path):
    src = tmp_path / "in"
    _save(src / "a.png")
    _save(src / "up" / "old.png")  # a previous run's output
    jobs = plan_jobs([src], src / "up", "jpeg", recursive=True)
    assert [j.source.name for j in jobs] == ["a.png"]


# -- channels ---------------------------------------------------------------------------------------

def _run_nearest(calls):
    def run(x):
        calls.append(x.shape[0])
        return x.repeat(2, axis=1).repeat(2, axis=2)
    return run


def test_channel_mapping():
    rgb = RNG.random((6, 8, 3), dtype=np.float32)
    gray = RNG.random((6, 8, 1), dtype=np.float32)
    alpha = RNG.random((6, 8), dtype=np.float32)
    near = lambda a: a.repeat(2, axis=0).repeat(2, axis=1)  # noqa: E731

    calls: list[int] = []
    out = upscale_picture(Picture(gray, bits=16), _run_nearest(calls), 3, 2)  # L through an RGB model
    assert calls == [3] and out.color.shape == (12, 16, 1) and out.bits == 16
    np.testing.assert_allclose(out.color, near(gray), atol=1e-6)

    calls.clear()
    out = upscale_picture(Picture(rgb, alpha), _run_nearest(calls), 3, 2)  # alpha bicubic
    assert calls == [3] and out.alpha.shape == (12, 16)
    assert np.abs(out.alpha - near(alpha)).mean() < 0.15  # bicubic, not nearest: close on average

    calls.clear()
    out = upscale_picture(Picture(rgb, alpha), _run_nearest(calls), 3, 2, alpha="model")
    assert calls == [3, 3]
    np.testing.assert_allclose(out.alpha, near(alpha), atol=1e-6)

    calls.clear()
    out = upscale_picture(Picture(rgb, alpha), _run_nearest(calls), 4, 2)  # RGBA model takes RGBA
    assert calls == [4]
    np.testing.assert_allclose(out.alpha, near(alpha), atol=1e-6)
    np.testing.assert_allclose(out.color, near(rgb), atol=1e-6)

    calls.clear()
    out = upscale_picture(Picture(rgb), _run_nearest(calls), 4, 2)  # RGB image, RGBA model: stays RGB
    assert calls == [4] and out.alpha is None and out.color.shape == (12, 16, 3)

    calls.clear()
    flat = np.ones((6, 8, 3), np.float32) * np.array([0.2, 0.5, 0.7], np.float32)
    out = upscale_picture(Picture(flat), _run_nearest(calls), 1, 2)  # luma through a gray model
    assert calls == [1]
    np.testing.assert_allclose(out.color, near(flat), atol=1e-4)


# -- the batch --------------------------------------------------------------------------------------

def test_batch_goes_on_after_bad_files_and_writes_everything_else(tmp_path):
    src = tmp_path / "in"
    _save(src / "a.png")
    _save(src / "tiny.png", 1, 1)
    _save(src / "thin.png", 3, 517)
    _save(src / "gray.png", mode="L")
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (src / "empty.png").write_bytes(b"")
    backend = OnnxRuntimeBackend(write_toy(tmp_path / "toy.onnx", tile=16, batch=2))
    jobs = plan_jobs([src], tmp_path / "out")
    report = run_batch(backend, jobs, _spec(backend))
    assert (report.count("done"), report.count("failed"), report.backend) == (4, 2, "onnxrt-cpu")
    reasons = sorted(r.reason for r in report.results if r.status == "failed")
    assert "broken.jpg: " in reasons[0] and "empty.png: empty file" in reasons[1]
    sizes = {p.name: Image.open(p).size for p in (tmp_path / "out").iterdir()}
    assert sizes == {"a.png": (56, 40), "tiny.png": (2, 2), "thin.png": (1034, 6), "gray.png": (56, 40)}
    assert Image.open(tmp_path / "out" / "gray.png").mode == "L"
    assert _leftovers(tmp_path) == []
    d = report.to_dict()
    assert d["done"] == 4 and d["input_megapixels"] > 0 and len(d["images"]) == 6


def test_failure_while_writing_leaves_no_partial_file(tmp_path, monkeypatch):
    src = tmp_path / "in"
    for name in ("a.png", "b.png", "c.png"):
        _save(src / name)
    real_save = Image.Image.save

    def flaky_save(self, fp, *args, **kwargs):
        if "b.png" in str(getattr(fp, "name", fp)):  # fp: the temporary file beside b.png
            with open(fp, "wb") as f:
                f.write(b"\x89PNG half an image")
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", flaky_save)
    backend = NearestBackend()
    report = run_batch(backend, plan_jobs([src], tmp_path / "out"), _spec(backend))
    assert [r.status for r in report.results] == ["done", "failed", "done"]
    assert "b.png: cannot write (No space left on device)" in report.results[1].reason
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]
    assert _leftovers(tmp_path) == []


def test_interrupt_mid_batch_leaves_only_complete_files(tmp_path):
    src = tmp_path / "in"
    for name in ("a.png", "b.png", "c.png"):
        _save(src / name)

    class Interrupted(NearestBackend):
        def infer(self, tiles):
            if self.calls >= 15:  # 4 x 6 tiles of 8 in batches of 2: 12 calls per image, so mid b.png
                raise KeyboardInterrupt
            return super().infer(tiles)

    backend = Interrupted()
    with pytest.raises(KeyboardInterrupt):
        run_batch(backend, plan_jobs([src], tmp_path / "out"), _spec(backend))
    # a.png was being written when b.png was interrupted: the writer finishes it, whole
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a.png"]
    assert read_image(tmp_path / "out" / "a.png").width == 56
    assert _leftovers(tmp_path) == []


def test_skip_existing_resumes(tmp_path):
    src = tmp_path / "in"
    for name in ("a.png", "b.png"):
        _save(src / name)
    backend = NearestBackend()
    jobs = plan_jobs([src], tmp_path / "out")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").write_bytes(b"from an earlier run")
    report = run_batch(backend, jobs, _spec(backend), BatchOptions(skip_existing=True))
    assert {r.source.split("/")[-1]: r.status for r in report.results} == {"a.png": "skipped", "b.png": "done"}
    assert (tmp_path / "out" / "a.png").read_bytes() == b"from an earlier run"
    report = run_batch(backend, jobs, _spec(backend))  # without the flag: rewritten
    assert report.count("done") == 2 and read_image(tmp_path / "out" / "a.png").width == 56


def test_torch_backend_runs_small_images_whole(tmp_path):
    """PyTorch takes any size: an image smaller than --tile runs whole, so the result is whole-image
    inference (to 8-bit rounding), not a tile padded with reflections."""
    import torch

    import hrx
    from conftest import randomize_params
    from hrx.runtime.torch_backend import TorchBackend

    torch.manual_seed(0)
    model = hrx.create_model("hrx-t", scale=2)
    randomize_params(model, 0.05)
    model = hrx.fuse(model.eval())
    backend = TorchBackend(model, tile=256, fuse=False)
    _save(tmp_path / "in" / "a.png", 32, 48)
    report = run_batch(backend, plan_jobs([tmp_path / "in"], tmp_path / "out"), _spec(backend))
    assert report.count("done") == 1
    x = np.asarray(Image.open(tmp_path / "in" / "a.png"), np.float32).transpose(2, 0, 1)[None] / 255
    with torch.inference_mode():
        whole = model(torch.from_numpy(x)).numpy()[0].transpose(1, 2, 0)
    got = np.asarray(Image.open(tmp_path / "out" / "a.png"), np.float32) / 255
    assert np.abs(got - np.clip(whole, 0, 1)).max() <= 0.5 / 255 + 1e-6


def test_non_finite_output_fails_the_image_and_writes_nothing(tmp_path):
    """A model that returns NaN for one image: that image fails with a line naming it and the tile, and no
    file is written for it (no black picture); the next image is written."""
    src = tmp_path / "in"
    _save(src / "a.png")
    _save(src / "b.png", 12, 12)

    class NaNOnce(NearestBackend):
        def infer(self, tiles):
            out = super().infer(tiles)
            return out * np.float32("nan") if self.calls == 1 else out

    backend = NaNOnce()
    report = run_batch(backend, plan_jobs([src], tmp_path / "out"), _spec(backend))
    assert [(r.source, r.status) for r in report.results] == [(str(src / "a.png"), "failed"),
                                                               (str(src / "b.png"), "done")]
    reason = report.results[0].reason
    assert reason.startswith(f"{src / 'a.png'}: the model output 1536 NaN and 0 Inf values (tile 1 of ")
    assert reason.endswith("at x=0 y=0); nothing written") and report.results[0].error == "NonFiniteOutput"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.png"] and _leftovers(tmp_path) == []
