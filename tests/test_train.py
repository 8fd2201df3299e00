"""hrx.data, hrx.evaluate, hrx.train and `hrx train`: split, degradation, evaluation protocol, loss
decrease, exact resume. Tiny model (hrx-t), few steps, 32-64 px crops."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hrx
from hrx.data import (Degradation, ImageRecord, PatchSampler, bicubic_downscale, degrade, folder_images,
                      load_image, mod_crop, skimage_photos, split_images)
from hrx.errors import HRXError
from hrx.evaluate import evaluate, run_padded, summarize
from hrx.metrics import psnr_y
from hrx.cli.train import TrainReporter
from hrx.train import TrainConfig, lr_at, train


def _write_images(folder: Path, n: int, size: tuple[int, int] = (80, 72)) -> None:
    """Smooth random colour images (a few sinusoids), so SR has something learnable."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size[1], 0:size[0]].astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.zeros((size[1], size[0], 3), np.float32)
        for c in range(3):
            for _ in range(4):
                fx, fy, ph = rng.uniform(0.02, 0.35, 2).tolist() + [rng.uniform(0, 6.28)]
                img[..., c] += np.sin(fx * xx + fy * yy + ph)
        img = (img - img.min()) / (img.max() - img.min())
        Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"img{i:02d}.png")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("images")
    _write_images(d, 6)
    return d


def _cfg(image_dir: Path, out: Path, **kw) -> TrainConfig:
    base = dict(arch="hrx-t", scale=2, data=str(image_dir), steps=6, batch=2, patch=32, lr=2e-3, warmup=2,
                val_every=3, ckpt_every=3, output=str(out), threads=1, device="cpu")
    return TrainConfig(**dict(base, **kw))


# -- data ------------------------------------------------------------------------------------------

def test_split_is_by_image_deterministic_and_order_free():
    recs = [ImageRecord(f"im{i}", Path(f"/x/im{i}.png")) for i in range(12)]
    a = split_images(recs, seed=0, val_fraction=0.25)
    b = split_images(list(reversed(recs)), seed=0, val_fraction=0.25)
    assert a == b
    train_names, val_names = {r.name for r in a.train}, {r.name for r in a.val}
    assert len(val_names) == 3 and not train_names & val_names and train_names | val_names == {r.name for r in recs}
    c = split_images(recs, seed=1, val_fraction=0.25)
    assert {r.name for r in c.val} != val_names  # the seed changes which images are held out
    with pytest.raises(HRXError):
        split_images(recs[:1], seed=0)


def test_skimage_photos_load_offline():
    recs = skimage_photos()
    assert len(recs) >= 10 and all(r.path.is_file() for r in recs)
    img = load_image(recs[0].path)
    assert img.shape[0] == 3 and img.dtype == torch.float32 and 0.0 <= float(img.min()) <= float(img.max()) <= 1.0


def test_folder_errors_are_one_line(tmp_path: Path):
    with pytest.raises(HRXError, match="no such data folder"):
        folder_images(tmp_path / "missing")
    (tmp_path / "one.png").write_bytes(b"")
    with pytest.raises(HRXError, match="at least 2 images"):
        folder_images(tmp_path)
    (tmp_path / "two.png").write_bytes(b"not a png")
    with pytest.raises(HRXError, match="two.png: not a readable image"):
        load_image(tmp_path / "two.png")


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_degradation_shapes_and_range(scale: int):
    hr = torch.rand(3, 3, 48, 48)
    gen = torch.Generator().manual_seed(0)
    for deg in (Degradation(scale), Degradation(scale, blur=1.5, noise=10.0, jpeg=40)):
        lr = degrade(hr, deg, gen)
        assert lr.shape == (3, 3, 48 // scale, 48 // scale)
        assert float(lr.min()) >= 0.0 and float(lr.max()) <= 1.0
        assert torch.equal(lr, (lr * 255).round() / 255)  # 8-bit levels
    # seeded: the same generator state gives the same degraded crops
    deg = Degradation(scale, blur=1.0, noise=5.0, jpeg=50)
    a = degrade(hr, deg, torch.Generator().manual_seed(3))
    b = degrade(hr, deg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_bicubic_downscale_requires_modcrop():
    with pytest.raises(ValueError):
        bicubic_downscale(torch.rand(1, 3, 33, 32), 2)
    assert mod_crop(torch.rand(3, 33, 35), 4).shape == (3, 32, 32)


def test_patch_sampler_shapes_and_state():
    imgs = [("a", torch.rand(3, 40, 50)), ("b", torch.rand(3, 20, 20))]
    s = PatchSampler(imgs, 32, Degradation(2), seed=0)
    assert s.skipped == ["b"]  # smaller than the patch
    state = s.get_state()
    lr, hr = s.batch(3)
    assert lr.shape == (3, 3, 16, 16) and hr.shape == (3, 3, 32, 32)
    s.set_state(state)
    lr2, hr2 = s.batch(3)
    assert torch.equal(hr, hr2) and torch.equal(lr, lr2)


# -- evaluation --------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", [2, 4])
def test_untrained_model_scores_as_bicubic(scale: int):
    """The model's output is its learned residual (zero at init) + bicubic: the eval pipeline's
    bicubic baseline and padding must agree with the model's own residual path."""
    model = hrx.create_model("hrx-t", scale=scale)
    # odd sizes: exercises mod-crop and the edge padding to size_multiple
    images = [("a", torch.rand(3, 70, 90)), ("b", load_image_smooth(101, 77))]
    rows = evaluate(model, images, scale)
    for r in rows:
        assert math.isfinite(r.psnr_model) and abs(r.gain) < 0.05, r
        assert abs(r.ssim_model - r.ssim_bicubic) < 1e-3


def load_image_smooth(w: int, h: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 6, h), torch.linspace(0, 9, w), indexing="ij")
    return torch.stack([(torch.sin(x + y) + 1) / 2, (torch.cos(x * 0.7) + 1) / 2, (torch.sin(y * 1.3) + 1) / 2])


def test_run_padded_crops_back():
    model = hrx.create_model("hrx-t", scale=2).eval()
    out = run_padded(model, torch.rand(1, 3, 20, 37))
    assert out.shape == (1, 3, 40, 74)


def test_psnr_y_known_value():
    a = torch.full((1, 3, 10, 10), 0.5)
    b = a.clone()
    b[..., 0, 0] = 0.5 + 10 / 255  # one pixel 10 levels off in every channel -> Y off by 10*219/255
    dy = 10 * (65.481 + 128.553 + 24.966) / 255
    expected = 10 * math.log10(255**2 / (dy**2 / 100))
    assert psnr_y(a, b, border=0) == pytest.approx(expected, abs=1e-6)
    assert psnr_y(a, b, border=1) == float("inf")  # the differing pixel is in the cropped border


# -- training ------------------------------------------------------------------------------------------

def test_lr_schedule():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr=1e-5)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(99, cfg) < 2e-5 and all(lr_at(i, cfg) >= lr_at(i + 1, cfg) for i in range(10, 99))


@pytest.mark.slow
def test_loss_decreases(image_dir: Path, tmp_path: Path):
    """Same crops every step (fixed batch) would overfit; use fresh crops, compare first and last window."""
    cfg = _cfg(image_dir, tmp_path / "m.pt", steps=40, batch=4, lr=3e-3, warmup=5, val_every=40, ckpt_every=40,
               log_every=10)
    lines: list[str] = []
    res = train(cfg, TrainReporter(bar=False, log=lines.append))
    losses = [float(l.split("loss ")[1].split()[0]) for l in lines if l.startswith("step ")]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.9 * losses[0], losses
    assert res.finished and res.steps_done == 40
    assert summarize(res.val_rows).gain > 0.0  # beats bicubic on the held-out image(s) already
    extra = hrx.load_model(res.output).checkpoint_extra
    assert extra["steps"] == 40 and extra["seed"] == 0 and extra["arch"] == "hrx-t"
    assert set(extra["split"]["train"]).isdisjoint(extra["split"]["val"])
    assert {"val_psnr", "val_psnr_bicubic", "val_ssim"} <= set(extra)


@pytest.mark.slow
def test_resume_is_exact(image_dir: Path, tmp_path: Path):
    straight = train(_cfg(image_dir, tmp_path / "a.pt", steps=6))
    part = train(_cfg(image_dir, tmp_path / "b.pt", steps=6, stop_after=3))
    assert not part.finished and part.steps_done == 3
    assert (tmp_path / "b.resume.pt").is_file()
    resumed = train(_cfg(image_dir, tmp_path / "b.pt", steps=6, resume=True))
    assert resumed.finished and resumed.steps_done == 6
    a = hrx.load_model(straight.output).state_dict()
    b = hrx.load_model(resumed.output).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # an untouched model would equal the initialisation: make sure training actually moved it
    init = hrx.create_model("hrx-t", scale=2).state_dict()
    assert any(not torch.equal(a[k], init[k]) for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_resume_refuses_changed_options(image_dir: Path, tmp_path: Path):
    train(_cfg(image_dir, tmp_path / "c.pt", steps=4, stop_after=2, ckpt_every=2))
    with pytest.raises(HRXError, match="different lr"):
        train(_cfg(image_dir, tmp_path / "c.pt", steps=4, lr=1e-4, resume=True))
    with pytest.raises(HRXError, match="no resume state"):
        train(_cfg(image_dir, tmp_path / "none.pt", steps=4, resume=True))


def test_bad_patch_is_a_one_line_error(image_dir: Path, tmp_path: Path):
    with pytest.raises(HRXError, match="multiple of 16"):
        train(_cfg(image_dir, tmp_path / "d.pt", patch=40))


@pytest.mark.slow
def test_cli_train(image_dir: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from hrx.cli.main import app

    out = tmp_path / "cli.safetensors"
    r = CliRunner().invoke(app, ["train", "--arch", "hrx-t", "--scale", "2", "--data", str(image_dir), "--steps", "2",
                                 "--batch", "2", "--patch", "32", "--threads", "1", "--device", "cpu", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file() and "val PSNR-Y" in r.output
    r = CliRunner().invoke(app, ["train", "--arch", "hrx-t", "--data", str(tmp_path / "nope"), "-o", str(out)])
    assert r.exit_code == 1 and "no such data folder" in r.output and "Traceback" not in r.output


REAL_DEGRADATION_MODELS = ("default-x1", "default-x2", "default-x4")  # trained with --degradation real (docs/training.md)


def test_bundled_models_load():
    from hrx.checkpoint import bundled_models

    bundled = bundled_models()
    assert {"default-x1", "default-x2", "default-x4"} <= set(bundled)
    for name, scale in (("default-x1", 1), ("default-x2", 2), ("default-x4", 4)):
        model = hrx.load_model(name)
        assert model.scale == scale
        extra = model.checkpoint_extra
        assert extra["val_psnr"] > extra["val_psnr_bicubic"]
        if name in REAL_DEGRADATION_MODELS:
            assert extra["degradation"]["kind"] == "real"
            assert set(extra["val_conditions"]) == {"jpeg40", "jpeg70", "noise6+jpeg80"}
            for cond in extra["val_conditions"].values():  # better than bicubic on every degraded input
                assert cond["psnr"] > cond["psnr_input"], (name, extra["val_conditions"])
        assert bundled[name].stat().st_size < 8 * 2**20


def test_command_line_records_every_trajectory_field():
    """Re-running the recorded command trains the same model even if a default changes later."""
    from hrx.train import TRAJECTORY_FIELDS

    cfg = TrainConfig(lr=2e-3, min_lr=1e-5, steps=7)
    cmd = cfg.command_line()
    for k in TRAJECTORY_FIELDS:
        if k == "init":  # no --init: random initialisation, which no later default can change
            assert " --init " not in cmd and " --init x.pt " in TrainConfig(init="x.pt").command_line()
            continue
        assert f" --{k.replace('_', '-')} " in cmd, k
    assert "--lr 0.002 " in cmd and "--data skimage " in cmd and "--steps 7 " in cmd
    assert TrainConfig(data="skimage").trajectory() == TrainConfig().trajectory()  # one spelling of the default
