"""Per-block checks: fuse() equals the unfused block; scan implementations agree; Haar is exact."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import randomize_params
from hrx.blocks.freq import FreqSplit, haar_dwt, haar_idwt
from hrx.blocks.gated_ffn import GatedFFN
from hrx.blocks.head import BicubicUpsample
from hrx.blocks.moe import DetailMoE, top1_combine
from hrx.blocks.moe_x import ArtifactExpert
from hrx.blocks.msg import Downsample, unshuffle_conv
from hrx.blocks.naf import NAFBlock, RepDWConv3
from hrx.blocks.replk import RepLK
from hrx.blocks.ssm import (SSMixer, selective_scan_bidirectional, selective_scan_chunked, selective_scan_ref,
                            use_scan_impl)
from hrx.blocks.window_attention import WindowAttention
from hrx.fusion import count_convs

FUSE_ATOL = 1e-5


def _fuse_all(block: torch.nn.Module) -> torch.nn.Module:
    """What ``hrx.fuse`` does to a block: fuse every sub-block (innermost first), then the block."""
    for m in reversed(list(block.modules())):
        if callable(getattr(m, "fuse", None)):
            m.fuse()
    return block


def _fused_vs_unfused(block: torch.nn.Module, x: torch.Tensor) -> float:
    randomize_params(block)
    block.eval()
    with torch.no_grad():
        ref = block(x)
        fused = _fuse_all(copy.deepcopy(block))
        _fuse_all(fused)  # idempotent
        out = fused(x)
    scale = ref.abs().max().item()
    return (out - ref).abs().max().item() / max(scale, 1.0)


@pytest.mark.parametrize("make", [
    lambda: RepLK(8, 7),
    lambda: RepLK(8, 5),
    lambda: RepDWConv3(8),
    lambda: NAFBlock(8),
    lambda: WindowAttention(8, 2, 4, shift=True),
    lambda: GatedFFN(8),
    lambda: SSMixer(8, d_state=4, head_dim=4, chunk=8),
    lambda: DetailMoE(8, 2, 4, kernel=5, d_state=4, head_dim=4, chunk=8),
    lambda: Downsample(8, 12),
    lambda: ArtifactExpert(8),
], ids=["replk7", "replk5", "repdw3", "naf", "wattn", "gffn", "ssm", "moe", "down", "artifact"])
def test_block_fuse_matches_unfused(make):
    err = _fused_vs_unfused(make(), torch.randn(2, 8, 16, 16))
    assert err < FUSE_ATOL, f"fused block differs by {err:.2e} (relative to output scale)"


@pytest.mark.parametrize("shift", [False, True])
def test_window_attention_fused_layout_and_residual_match_unfused(shift):
    """The fused block's channels-last token path (one Gather per side, q scale folded) and its
    channels-last residual equal the unfused block, on non-square maps and several windows."""
    from hrx.blocks.window_attention import window_order

    block = WindowAttention(16, 4, 4, shift=shift)
    randomize_params(block)
    block.eval()
    x = torch.randn(2, 16, 8, 20)
    with torch.no_grad():
        ref = block(x)
        fused = _fuse_all(copy.deepcopy(block))
        assert fused.tokens_layout and fused.norm.weight is None
        assert (fused(x) - ref).abs().max().item() < FUSE_ATOL
        assert (fused.residual(x) - (x + ref)).abs().max().item() < FUSE_ATOL
        assert torch.equal(block.residual(x), x + ref)
    order, back = window_order(8, 20, 4, 2 if shift else 0)
    assert torch.equal(order[back], torch.arange(160)) and torch.equal(back[order], torch.arange(160))


def test_gated_fuse_fused_split_gate_matches_unfused():
    from hrx.blocks.msg import GatedFuse

    block = GatedFuse(8)
    randomize_params(block)
    block.eval()
    x, skip = torch.randn(2, 8, 6, 10), torch.randn(2, 8, 6, 10)
    with torch.no_grad():
        ref = block(x, skip)
        fused = _fuse_all(copy.deepcopy(block))
        _fuse_all(fused)
        out = fused(x, skip)
    assert fused.gate_skip is not None and fused.gate.in_channels == 8
    assert (out - ref).abs().max().item() < FUSE_ATOL


@pytest.mark.parametrize("factor,kernel,padding", [(2, 3, 1), (2, 1, 0), (3, 3, 1), (2, 3, 0)])
def test_unshuffle_conv_equals_unshuffle_then_conv(factor, kernel, padding):
    """conv(pixel_unshuffle(x, r)) == one stride-r conv with an r*k kernel, borders included."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(5 * factor * factor, 7, kernel, padding=padding)
    x = torch.randn(2, 5, 6 * factor, 4 * factor)
    with torch.no_grad():
        ref = conv(F.pixel_unshuffle(x, factor))
        fused = unshuffle_conv(conv, factor)
        out = fused(x)
    assert fused.stride == (factor, factor) and fused.kernel_size == (factor * kernel,) * 2
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() < 1e-5


def test_unshuffle_conv_refuses_what_it_cannot_rewrite():
    with pytest.raises(ValueError, match="unshuffle_conv"):
        unshuffle_conv(torch.nn.Conv2d(8, 8, 3, padding=1, groups=2), 2)
    with pytest.raises(ValueError, match="unshuffle_conv"):
        unshuffle_conv(torch.nn.Conv2d(8, 8, 3, stride=2), 2)


@pytest.mark.parametrize("arch", ["hrx-t", "hydra-t"])
def test_fused_models_have_no_pixel_unshuffle(arch):
    """The stem / downsample / MoE-X unshuffles are folded into strided convs by ``hrx.fuse``."""
    import hrx

    model = hrx.create_model(arch, scale=2)
    assert any(isinstance(m, torch.nn.PixelUnshuffle) for m in model.modules())
    assert not any(isinstance(m, torch.nn.PixelUnshuffle) for m in hrx.fuse(model).modules())


def test_moe_fuse_fuses_its_experts_and_freezes_top1_routing():
    """What fusing a DetailMoE changes: its experts' branches fold (fewer convs) and routing is frozen
    to top-1 even in train mode, where the unfused block routes top-2 (a different output)."""
    moe = DetailMoE(8, 2, 4, kernel=5, d_state=4, head_dim=4, chunk=8)
    randomize_params(moe, 0.3)
    x = torch.randn(2, 8, 16, 16)
    fused = _fuse_all(copy.deepcopy(moe))
    assert count_convs(fused) < count_convs(moe)
    with torch.no_grad():
        eval_out = moe.eval()(x)
        top2 = moe.train()(x)
        frozen = fused.train()(x)
    assert (top2 - eval_out).abs().max().item() > 1e-3  # top-2 really differs from top-1 here
    assert (frozen - eval_out).abs().max().item() < FUSE_ATOL * max(1.0, eval_out.abs().max().item())
    assert fused.aux_loss is None


def test_replk_fuses_to_one_conv():
    block = RepLK(8, 7)
    before = count_convs(block)
    block.fuse()
    assert before == 5 and count_convs(block) == 1  # 3x3, 5x5, 7x7, 1x7, 7x1


@pytest.mark.parametrize("chunk", [4, 16, 64])
def test_selective_scan_chunked_equals_sequential(chunk):
    g = torch.Generator().manual_seed(3)
    b, L, H, P, N = 2, 50, 3, 4, 5  # channels first: x [b, H, P, L], dt [b, H, L], B, C [b, N, L]
    x = torch.randn(b, H, P, L, generator=g)
    dt = torch.rand(b, H, L, generator=g) * 0.7 + 0.01
    A = -(torch.rand(H, generator=g) * 3 + 0.1)
    B, C = torch.randn(b, N, L, generator=g), torch.randn(b, N, L, generator=g)
    D = torch.randn(H, generator=g)
    ref = selective_scan_ref(x, dt, A, B, C, D)
    out = selective_scan_chunked(x, dt, A, B, C, D, chunk)
    assert (out - ref).abs().max().item() < 1e-5


def test_ssm_mixer_scan_orders_are_distinct_and_impls_agree():
    m = SSMixer(8, d_state=4, head_dim=4, chunk=8).eval()
    randomize_params(m, 0.2)
    x = torch.randn(1, 8, 8, 12)
    ref = use_scan_impl(copy.deepcopy(m), "reference")
    with torch.no_grad():
        y = m(x)
        y_ref = ref(x)
    assert m.scan_impl == "chunked" and ref.scan_impl == "reference"  # chosen per module, not process-wide
    assert (y - y_ref).abs().max().item() < 1e-5
    # beyond the 3x3 depthwise conv's reach: pixel (0, 6) influences (0, 0) only via the reverse row scan
    x2 = x.clone()
    x2[0, :, 0, 6] += torch.linspace(-3.0, 3.0, 8)  # not constant over channels: LayerNorm would erase that
    with torch.no_grad():
        d = (m(x2) - y)[..., 0, 0].abs().max().item()
    assert d > 1e-6


def test_ssm_mixer_batch_matches_one_image_at_a_time():
    """The four scan orders of every image stay together when images are batched (the orders and the
    images share the scan's batch axis; each order has its own dt bias and projections)."""
    m = SSMixer(8, d_state=4, head_dim=4, chunk=8).eval()
    randomize_params(m, 0.2)
    with torch.no_grad():
        m.dt_bias.copy_(torch.linspace(-2.0, 1.0, m.dt_bias.numel()))  # every order's bias differs
    x = torch.randn(3, 8, 8, 12)
    with torch.no_grad():
        batched = m(x)
        single = torch.cat([m(x[i:i + 1]) for i in range(3)])
    scale = batched.abs().max().item()
    assert (batched - single).abs().max().item() < 1e-5 * max(1.0, scale)
    assert (batched[0] - batched[1]).abs().max().item() > 1e-2 * scale


@pytest.mark.parametrize("chunk", [4, 16, 64])
def test_selective_scan_bidirectional_equals_forward_plus_flipped_scan(chunk):
    """Both directions in place (mirrored masks and carry, L = 50 padded to whole chunks) against two
    sequential scans, the second of the flipped sequence with its own dt, B, C."""
    g = torch.Generator().manual_seed(4)
    n, L, H, P, N = 2, 50, 3, 4, 5
    x = torch.randn(n, H, P, L, generator=g)
    dt = torch.rand(n, 2, H, L, generator=g) * 0.7 + 0.01
    A = -(torch.rand(H, generator=g) * 3 + 0.1)
    B, C = torch.randn(n, 2, N, L, generator=g), torch.randn(n, 2, N, L, generator=g)
    D = torch.randn(H, generator=g)
    forward = selective_scan_ref(x, dt[:, 0], A, B[:, 0], C[:, 0], D)
    flipped = selective_scan_ref(x.flip(-1), dt[:, 1].flip(-1), A, B[:, 1].flip(-1), C[:, 1].flip(-1), D).flip(-1)
    out = selective_scan_bidirectional(x, dt, A, B, C, D, chunk)
    assert (out - (forward + flipped)).abs().max().item() < 1e-5 * max(1.0, out.abs().max().item())
    assert (out - 2 * forward).abs().max().item() > 1e-1  # the reversed direction really differs


@pytest.mark.parametrize("b, h, w, chunk", [(2, 8, 12, 8), (1, 10, 7, 16)])
def test_fused_ssm_mixer_scans_in_place_as_the_flipped_orders(b, h, w, chunk):
    """The deploy form (fuse(): rows and columns each scanned both ways in place, nothing flipped) equals
    the four flipped orders and the sequential reference; another scan implementation (a plugin's) still
    gets the four flipped orders; fuse() adds nothing to the state dict."""
    m = SSMixer(8, d_state=4, head_dim=4, chunk=chunk).eval()
    randomize_params(m, 0.2)
    with torch.no_grad():
        m.dt_bias.copy_(torch.linspace(-2.0, 1.0, m.dt_bias.numel()))  # every order's bias differs
    keys = set(m.state_dict())
    x = torch.randn(b, 8, h, w)
    fused = copy.deepcopy(m)
    fused.fuse()
    flipped = copy.deepcopy(fused)
    flipped.bidirectional = False
    reference = use_scan_impl(copy.deepcopy(fused), "reference")
    with torch.no_grad():
        y, want, ref = fused(x), flipped(x), reference(x)
    scale = max(1.0, want.abs().max().item())
    assert fused.bidirectional and set(fused.state_dict()) <= keys  # fuse() folds the norm, adds nothing
    assert (y - want).abs().max().item() < FUSE_ATOL * scale
    assert (y - ref).abs().max().item() < FUSE_ATOL * scale


def test_haar_reconstructs_input():
    x = torch.randn(2, 3, 16, 24, dtype=torch.float64).float()
    assert (haar_idwt(haar_dwt(x)) - x).abs().max().item() < 1e-6
    # orthonormal: energy preserved
    assert torch.allclose(haar_dwt(x).pow(2).sum(), x.pow(2).sum(), rtol=1e-5)


@pytest.mark.parametrize("mode", ["haar", "laplacian"])
def test_freq_split_sums_to_input_and_lf_is_smooth(mode):
    x = torch.randn(1, 4, 16, 16)
    lf, hf = FreqSplit(mode)(x)
    assert (lf + hf - x).abs().max().item() < 1e-6
    tv = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().mean()  # noqa: E731
    assert tv(lf) < tv(x)


def test_haar_low_band_is_inverse_of_ll_only():
    x = torch.randn(1, 2, 8, 8)
    bands = haar_dwt(x)
    bands[:, 1:] = 0
    lf, _ = FreqSplit("haar")(x)
    assert (lf - haar_idwt(bands)).abs().max().item() < 1e-6


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_upsample_matches_torch(scale):
    x = torch.rand(2, 3, 7, 11)
    ref = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    assert (BicubicUpsample(3, scale)(x) - ref).abs().max().item() < 1e-5


def test_moe_top1_matches_argmax_and_ties_pick_lowest():
    logits = torch.randn(2, 4, 5, 5)
    logits[0, :, 0, 0] = torch.tensor([1.0, 3.0, 3.0, 0.0])  # tie between 1 and 2
    experts = torch.arange(4.0).view(1, 4, 1, 1, 1).expand(2, 4, 3, 5, 5)
    out = top1_combine(logits, experts)
    idx = logits.argmax(1)
    p = torch.softmax(logits, 1).gather(1, idx[:, None])[:, 0]
    assert torch.allclose(out[:, 0], idx.float() * p)
    assert idx[0, 0, 0].item() == 1


def test_moe_training_is_top2_with_balance_loss_and_eval_top1():
    moe = DetailMoE(8, 2, 4, kernel=5, d_state=4, head_dim=4, chunk=8)
    randomize_params(moe, 0.3)
    x = torch.randn(2, 8, 8, 8)
    moe.train()
    moe(x)
    assert moe.aux_loss is not None and moe.aux_loss.item() >= 1.0 - 1e-4  # minimum 1 at perfect balance
    moe.eval()
    with torch.no_grad():
        logits = moe.router(x)
        outs = moe.expert_outputs(x)
        y = moe(x)
        idx = logits.argmax(1, keepdim=True)
        p = torch.softmax(logits, 1).gather(1, idx)
        chosen = outs.gather(1, idx[:, :, None].expand(-1, -1, 8, -1, -1))[:, 0]
    assert torch.allclose(y, x + p * chosen * moe.scale, atol=1e-6)


def test_segsum_exp_is_the_masked_segment_sum_exactly():
    """The Where-free segment sum equals the textbook masked form bit for bit (the bundled checkpoints'
    outputs do not move), and below the diagonal equals exp(sum a[j+1..i]) computed term by term."""
    from hrx.blocks.ssm import _segsum_exp

    g = torch.Generator().manual_seed(3)
    a = -torch.rand(2, 3, 5, 17, generator=g) * 2
    T = a.shape[-1]
    lower_strict = torch.tril(torch.ones(T, T, dtype=torch.bool), -1)
    x = torch.cumsum(torch.where(lower_strict, a.unsqueeze(-1).expand(*a.shape, T), 0.0), dim=-2)
    textbook = torch.exp(torch.where(torch.tril(torch.ones(T, T, dtype=torch.bool)), x, -float("inf")))
    out = _segsum_exp(a)
    assert torch.equal(out, textbook)
    i, j = 11, 4
    assert torch.allclose(out[..., i, j], torch.exp(a[..., j + 1:i + 1].sum(-1)), rtol=1e-6)
    assert torch.all(out[..., j, i] == 0)


def test_fused_moe_routes_as_a_per_pixel_reference_without_its_routing_code():
    """The fused DetailMoE against a reference that shares none of its routing: the unfused router's logits
    and experts' outputs, then per pixel in numpy (float64) the expert of the largest logit, weighted by its
    softmax probability. The fuse-vs-unfused test compares two paths through ``top1_combine``; this one
    fails if that function routes wrongly."""
    moe = DetailMoE(8, 2, 4, kernel=5, d_state=4, head_dim=4, chunk=8)
    randomize_params(moe, 0.3)
    moe.eval()
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        logits = moe.router(x).double().numpy()  # [B, E, H, W]
        outs = torch.stack([e(x) for e in moe.experts], 1).double().numpy()  # [B, E, C, H, W]
        fused = _fuse_all(copy.deepcopy(moe))(x).double().numpy()
    want = x.double().numpy().copy()
    scale = moe.scale.detach().double().numpy()[0, :, 0, 0]
    chosen = set()
    for b in range(2):
        for i in range(12):
            for j in range(12):
                z = logits[b, :, i, j]
                e = max(range(len(z)), key=lambda k: z[k])
                chosen.add(e)
                p = np.exp(z[e] - z.max()) / np.exp(z - z.max()).sum()
                want[b, :, i, j] += scale * p * outs[b, e, :, i, j]
    assert len(chosen) >= 2, "the test needs pixels routed to different experts"
    err = float(np.abs(fused - want).max()) / max(1.0, float(np.abs(want).max()))
    assert err < FUSE_ATOL, f"fused MoE differs from the per-pixel reference by {err:.2e}"
