"""Training losses against values computed independently."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import hrx
from hrx.losses import fft_loss, l1_loss, moe_balance_loss, ssim
from hrx.metrics import psnr


def test_l1_known_value():
    a = torch.zeros(1, 1, 2, 2)
    b = torch.tensor([[[[1.0, -1.0], [2.0, 0.0]]]])
    assert l1_loss(a, b).item() == pytest.approx(1.0)


def test_ssim_matches_skimage():
    from skimage import metrics

    g = np.random.default_rng(0)
    x = g.random((40, 48)).astype(np.float64)
    y = np.clip(x + g.normal(0, 0.1, x.shape), 0, 1)
    ref = metrics.structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False)
    ours = ssim(torch.from_numpy(y)[None, None], torch.from_numpy(x)[None, None]).item()
    assert ours == pytest.approx(ref, abs=2e-3)
    assert ssim(torch.from_numpy(x)[None, None], torch.from_numpy(x)[None, None]).item() == pytest.approx(1.0)


def test_fft_loss_known_value_for_constant_offset():
    # a constant offset c only changes the DC term: |c * sqrt(HW)| (orthonormal FFT), so the mean
    # over the H * (W/2+1) complex values, real and imaginary parts, is c*sqrt(HW) / (2*H*(W/2+1))
    h, w, c = 8, 8, 0.5
    x = torch.rand(1, 1, h, w)
    expected = c * math.sqrt(h * w) / (2 * h * (w // 2 + 1))
    assert fft_loss(x + c, x).item() == pytest.approx(expected, rel=1e-4)
    assert fft_loss(x, x).item() == 0.0


def test_balance_loss_is_one_for_uniform_routing():
    model = hrx.create_model("hrx-t", scale=2).train()
    for p in model.detail.router.fc2.parameters():
        torch.nn.init.zeros_(p)  # uniform probabilities, ties -> a fixed top-2
    model(torch.rand(1, 3, 32, 32))
    # f = (1/2, 1/2, 0, 0), P = 1/4 each: E * sum f*P = 4 * (1/8 + 1/8) = 1
    assert moe_balance_loss(model).item() == pytest.approx(1.0, abs=1e-6)


def test_psnr_known_value():
    a = torch.zeros(1, 1, 4, 4)
    assert psnr(a + 0.1, a) == pytest.approx(20.0, abs=1e-4)
