"""hrx.degradations (the real-world chain), hrx.synthetic (generated training images) and the training
options that use them: determinism, documented ranges, shapes, the clean share, EMA, --init, BF16 autocast,
and one-line errors for bad options."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hrx
from hrx.data import PatchSampler, bicubic_downscale, detail
from hrx.degradations import (EVAL_CONDITIONS, KERNEL_KINDS, RESIZE_MODES, RealDegradation, apply,
                              blur_kernel, sinc_kernel)
from hrx.errors import HRXError
from hrx.synthetic import KINDS, synthetic_images
from hrx.train import TrainConfig, ema_update, init_from, train, train_dtype


def _hr(n: int = 3, side: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand((n, 3, side // 8, side // 8), generator=g)
    return torch.nn.functional.interpolate(base, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)


def test_same_seed_same_output_other_seed_other_output():
    deg, hr = RealDegradation(2, clean_share=0.0), _hr()
    a = deg(hr, torch.Generator().manual_seed(7))
    b = deg(hr, torch.Generator().manual_seed(7))
    c = deg(hr, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_shapes_and_8bit_levels(scale: int):
    out = RealDegradation(scale, clean_share=0.0)(_hr(4, 64), torch.Generator().manual_seed(1))
    assert out.shape == (4, 3, 64 // scale, 64 // scale)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.equal(out, (out * 255).round() / 255)


def test_every_draw_stays_in_its_documented_range():
    cfg = RealDegradation(2, clean_share=0.2)
    gen = torch.Generator().manual_seed(0)
    draws = [cfg.draw(gen) for _ in range(600)]
    clean = sum(d.clean for d in draws)
    assert abs(clean / len(draws) - 0.2) < 0.05
    kinds, qualities, sigmas = set(), [], []
    for d in draws:
        if d.clean:
            assert d.stages == ()
            continue
        assert 1 <= len(d.stages) <= 2
        for st, stage in zip(d.stages, (cfg.first, cfg.second)):
            if st.blur is not None:
                kinds.add(st.blur.kind)
                assert st.blur.size in cfg.kernel_sizes and st.blur.kind in KERNEL_KINDS
                for s in (st.blur.sigma_x, st.blur.sigma_y):
                    assert stage.blur_sigma[0] <= s <= stage.blur_sigma[1]
            lo, hi = stage.resize_down[0], stage.resize_up[1]
            assert lo <= st.resize <= hi and st.resize_mode in RESIZE_MODES
            if st.noise is not None:
                r = stage.gaussian_sigma if st.noise.gaussian else stage.poisson_scale
                assert r[0] <= st.noise.level <= r[1]
                if st.noise.gaussian:
                    sigmas.append(st.noise.level)
            if st.jpeg:
                assert stage.jpeg_quality[0] <= st.jpeg <= stage.jpeg_quality[1]
        if d.final_jpeg:
            qualities.append(d.final_jpeg)
            assert cfg.final_jpeg_quality[0] <= d.final_jpeg <= cfg.final_jpeg_quality[1]
        if d.sinc_cutoff:
            assert cfg.sinc_cutoff[0] <= d.sinc_cutoff <= cfg.sinc_cutoff[1] and d.sinc_size in cfg.sinc_sizes
    assert kinds == set(KERNEL_KINDS)  # every kernel kind is drawn
    assert min(qualities) < 45 and max(qualities) > 85  # the JPEG range is used across its width
    assert min(sigmas) < 3 and max(sigmas) > 12


def test_clean_share_is_exactly_bicubic():
    hr = _hr(4, 64)
    out = RealDegradation(2, clean_share=1.0)(hr, torch.Generator().manual_seed(3))
    assert torch.equal(out, bicubic_downscale(hr, 2))
    degraded = RealDegradation(2, clean_share=0.0)(hr, torch.Generator().manual_seed(3))
    assert float((degraded - bicubic_downscale(hr, 2)).abs().mean()) > 1e-3


def test_kernels_sum_to_one_and_blur():
    for kind in KERNEL_KINDS:
        from hrx.degradations import Blur

        k = blur_kernel(Blur(kind, 13, 1.5, 0.8, 0.7, 1.5))
        assert k.shape == (13, 13) and abs(float(k.sum()) - 1) < 1e-5 and float(k.min()) >= 0
        assert float(k[6, 6]) == float(k.max())  # peaked in the centre
    s = sinc_kernel(math.pi / 2, 11)
    assert abs(float(s.sum()) - 1) < 1e-5 and float(s.min()) < 0  # ringing lobes


def test_bad_ranges_are_refused():
    from dataclasses import replace

    with pytest.raises(HRXError, match="clean share"):
        RealDegradation(2, clean_share=1.5)
    with pytest.raises(HRXError, match="scale"):
        RealDegradation(5)
    bad = replace(RealDegradation(2).first, jpeg_quality=(90.0, 40.0))
    with pytest.raises(HRXError, match="empty"):
        RealDegradation(2, first=bad)


def test_eval_conditions_are_fixed_and_degrade():
    lr = bicubic_downscale(_hr(2, 64), 2)
    names = [c.name for c in EVAL_CONDITIONS]
    assert names == ["clean", "jpeg40", "jpeg70", "noise6+jpeg80"]
    for c in EVAL_CONDITIONS:
        a, b = c(lr), c(lr)
        assert torch.equal(a, b)
        assert torch.equal(a, lr) == (c.name == "clean")


def test_synthetic_images_are_seeded_detailed_and_of_every_kind():
    a = synthetic_images(6, seed=1, size=96)
    b = synthetic_images(6, seed=1, size=96)
    c = synthetic_images(3, seed=2, size=96)
    assert [n for n, _ in a] == [f"synthetic/{KINDS[i % 3]}-{i:03d}" for i in range(6)]
    for (_, x), (_, y) in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[0][1], c[0][1])
    for _, img in a:
        assert img.shape == (3, 96, 96) and float(img.min()) >= 0 and float(img.max()) <= 1
        assert detail(img) > 4.0  # edges and texture, not flat fields


def test_sampler_draws_the_synthetic_share():
    photos = [("p", torch.zeros(3, 64, 64))]
    synth = [("s", torch.ones(3, 64, 64))]
    s = PatchSampler(photos, 32, RealDegradation(2, clean_share=1.0), seed=0, extra=synth, extra_share=0.25)
    _, hr = s.batch(400)
    share = float(hr.mean(dim=(1, 2, 3)).gt(0.5).float().mean())
    assert abs(share - 0.25) < 0.06
    with pytest.raises(HRXError, match="synthetic"):
        PatchSampler(photos, 32, RealDegradation(2), seed=0, extra=None, extra_share=0.5)


def test_ema_moves_towards_the_model_and_init_copies_matching_tensors(tmp_path: Path):
    torch.manual_seed(0)
    m = hrx.create_model("hrx-t", scale=2)
    ema = hrx.create_model("hrx-t", scale=2)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    before = [p.clone() for p in ema.parameters()]
    ema_update(ema, m, decay=0.9, step=1000)
    for e, b, p in zip(ema.parameters(), before, m.parameters()):
        assert torch.allclose(e, 0.9 * b + 0.1 * p, atol=1e-6)
    path = tmp_path / "x2.safetensors"
    hrx.save_model(m, path)
    x1 = hrx.create_model("hrx-t", scale=1)
    n = init_from(x1, str(path), "hrx-t")
    own = x1.state_dict()
    src = m.state_dict()
    copied = [k for k in own if k in src and own[k].shape == src[k].shape and not k.startswith("head.refine.")]
    assert n == len(copied) > 0.8 * len(own)
    assert all(torch.equal(own[k], src[k]) for k in copied)
    # from another scale the head's last conv stays zero: the x1 model starts as its input, not a wrong residual
    assert not x1.head.refine.weight.any() and src["head.refine.weight"].any()
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(x1(x), x)
    same = hrx.create_model("hrx-t", scale=2)
    init_from(same, str(path), "hrx-t")
    assert torch.equal(same.head.refine.weight, src["head.refine.weight"])  # same scale: everything is copied
    with pytest.raises(HRXError, match="same architecture"):
        init_from(hrx.create_model("hydra-t", scale=2), str(path), "hydra-t")


def test_bf16_autocast_choice():
    cpu = torch.device("cpu")
    assert train_dtype(TrainConfig(precision="bf16"), cpu) == torch.bfloat16
    assert train_dtype(TrainConfig(precision="fp32"), cpu) == torch.float32


def _photos(folder: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        base = rng.uniform(0, 255, (12, 12, 3)).astype(np.uint8)
        Image.fromarray(base).resize((96, 96), Image.BICUBIC).save(folder / f"p{i}.png")
    return folder


def test_real_training_with_synthetic_ema_and_bf16_runs_and_validates_degraded(tmp_path: Path):
    data = _photos(tmp_path / "photos")
    init = tmp_path / "init.safetensors"
    torch.manual_seed(1)
    m = hrx.create_model("hrx-t", scale=2)
    hrx.save_model(m, init)
    cfg = TrainConfig(arch="hrx-t", scale=1, data=str(data), steps=3, batch=2, patch=32, warmup=1, val_every=3,
                      ckpt_every=3, degradation="real", synthetic=3, synthetic_share=0.5, ema=0.9, precision="bf16",
                      init=str(init), threads=1, output=str(tmp_path / "x1.safetensors"))
    res = train(cfg)
    assert res.finished and math.isfinite(res.last_loss)
    extra = hrx.load_model(res.output).checkpoint_extra
    assert set(extra["val_conditions"]) == {"jpeg40", "jpeg70", "noise6+jpeg80"}
    assert all(math.isfinite(v["psnr"]) for v in extra["val_conditions"].values())
    assert math.isfinite(extra["val_psnr"])  # x1: validated on degraded inputs, not the target itself
    assert extra["degradation"]["kind"] == "real" and extra["degradation"]["synthetic"]["images"] == 3
    assert "--degradation real" in extra["command"] and f"--init {init}" in extra["command"]


@pytest.mark.parametrize("args, message", [
    (["--degradation", "bsrgan"], "degradation must be one of"),
    (["--clean-share", "1.5"], "clean share"),
    (["--degradation", "real", "--jpeg", "30"], "belong to --degradation simple"),
    (["--noise", "500"], "noise sigma"),
    (["--precision", "fp8"], "precision must be one of"),
])
def test_bad_training_options_are_one_line(tmp_path: Path, args: list[str], message: str):
    from typer.testing import CliRunner

    from hrx.cli.main import app

    r = CliRunner().invoke(app, ["train", "--arch", "hrx-t", *args, "-o", str(tmp_path / "m.pt")])
    assert r.exit_code != 0 and message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_a_data_folder_without_usable_images_is_one_line(tmp_path: Path):
    from typer.testing import CliRunner

    from hrx.cli.main import app

    d = tmp_path / "junk"
    d.mkdir()
    for i in range(3):
        (d / f"x{i}.png").write_bytes(b"not a png")
    r = CliRunner().invoke(app, ["train", "--arch", "hrx-t", "--data", str(d), "--steps", "1", "-o",
                                 str(tmp_path / "m.pt")])
    assert r.exit_code != 0 and "Traceback" not in r.output
    assert re.fullmatch(r"error: \S+/junk/x\d\.png: not a readable image \(\w+\)", r.output.strip())


def test_photo_chain_at_x1_and_x2_and_x4_unchanged():
    assert RealDegradation.for_scale(4, 0.25) == RealDegradation(4, clean_share=0.25)
    for scale in (1, 2):
        light, full = RealDegradation.for_scale(scale), RealDegradation(scale)
        assert light.first.blur_prob < full.first.blur_prob and light.first.blur_sigma[1] < full.first.blur_sigma[1]
        assert light.second_prob == 0.0 and light.sinc_prob == 0.0
        assert light.first.noise_prob > 0 and light.final_jpeg_prob >= full.final_jpeg_prob
        # the only resize goes straight to the input size, so the noise and JPEG are drawn at that size
        gen = torch.Generator().manual_seed(scale)
        hr = torch.rand(3, 32, 32)
        for _ in range(50):
            d = light.draw(gen)
            if d.clean:
                continue
            (st,) = d.stages
            assert st.resize in (1.0, 1.0 / scale)
            assert apply(hr, d, scale).shape == (3, 32 // scale, 32 // scale)
