"""Tiling arithmetic: tiled == whole-image inference for a receptive-field-bounded model, and a bound on
the difference for a real HRX model (global pooling and selective scan see only their tile)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import hrx
from conftest import assert_not_bicubic, randomize_params
from hrx.errors import HRXError
from hrx.metrics import psnr_from_mse
from hrx.runtime.tiling import TileSpec, axis_windows, plan_axis, tile_count, upscale_tiled
from runtime_support import toy_whole


def _toy_infer(calls: list[int] | None = None):
    def infer(tiles: np.ndarray) -> np.ndarray:
        if calls is not None:
            calls.append(tiles.shape[0])
        return toy_whole(tiles)
    return infer


def _reference(img: np.ndarray, spec: TileSpec) -> np.ndarray:
    """Whole-image inference on the image extended the way the tiler extends it (bottom/right reflection)."""
    h, w = img.shape[1:]
    rows, cols = plan_axis(h, spec), plan_axis(w, spec)
    padded = np.pad(img, ((0, 0), (0, rows.padded - h), (0, cols.padded - w)), mode="reflect")
    return toy_whole(padded[None])[0][:, :h * spec.scale, :w * spec.scale]


@pytest.mark.parametrize("merge", ["crop", "blend"])
@pytest.mark.parametrize("hw", [(1, 1), (3, 517), (16, 16), (37, 50), (50, 37)])
def test_tiled_equals_whole_for_bounded_receptive_field(merge, hw):
    # the toy's receptive radius is 2: crop needs overlap >= 4, blend overlap >= 8 (weights start at O/4)
    img = np.random.default_rng(0).random((3, *hw), dtype=np.float32)
    spec = TileSpec(tile=16, overlap=8, scale=2, size_multiple=4, batch=3, merge=merge)
    calls: list[int] = []
    out = upscale_tiled(img, _toy_infer(calls), spec)
    assert out.shape == (3, hw[0] * 2, hw[1] * 2)
    assert set(calls) == {3}  # always a full static batch
    assert sum(calls) >= tile_count(*hw, spec)
    err = float(np.abs(out - _reference(img, spec)).max())
    assert err < 1e-5, f"{merge} {hw}: max abs error {err:.2e}"


def test_infer_many_stream_gives_the_same_result():
    """Backends that keep several batches in flight (TensorRT's ``infer_many``) are fed a stream."""
    img = np.random.default_rng(5).random((3, 30, 41), dtype=np.float32)
    spec = TileSpec(tile=16, overlap=8, scale=2, size_multiple=4, batch=2, merge="blend")
    seen: list[int] = []

    def infer_many(batches):
        for b in batches:
            seen.append(b.shape[0])
            yield toy_whole(b)

    out = upscale_tiled(img, lambda t: pytest.fail("infer used"), spec, infer_many=infer_many)
    np.testing.assert_allclose(out, upscale_tiled(img, _toy_infer(), spec), atol=1e-6)
    assert len(seen) * 2 >= tile_count(30, 41, spec) and set(seen) == {2}


def test_too_little_overlap_is_caught():
    """The exactness test is sharp: with overlap below the receptive field, tiles disagree at seams."""
    img = np.random.default_rng(1).random((3, 40, 40), dtype=np.float32)
    spec = TileSpec(tile=16, overlap=0, scale=2, size_multiple=4, batch=1, merge="crop")
    err = float(np.abs(upscale_tiled(img, _toy_infer(), spec) - _reference(img, spec)).max())
    assert err > 1e-2


def test_plan_starts_aligned_and_cover():
    spec = TileSpec(tile=128, overlap=16, scale=2, size_multiple=32)
    assert spec.stride == 96  # 112 rounded down to a multiple of 32
    plan = plan_axis(517, spec)
    assert plan.padded == 544 and plan.starts == (0, 96, 192, 288, 384, 416)
    assert all(s % 32 == 0 for s in plan.starts)
    assert plan_axis(3, spec).starts == (0,) and plan_axis(3, spec).padded == 128
    for merge in ("crop", "blend"):
        windows = axis_windows(plan, TileSpec(128, 16, 2, 32, 1, merge))
        total = np.zeros(517 * 2)
        for lo, hi, w in windows:
            total[lo:hi] += 1.0 if w is None else w
        np.testing.assert_allclose(total, 1.0, atol=1e-12)  # a partition of unity over the image


def test_spec_validation():
    with pytest.raises(HRXError, match="multiple"):
        TileSpec(tile=30, overlap=4, scale=2, size_multiple=16)
    with pytest.raises(HRXError, match="too large"):
        TileSpec(tile=32, overlap=20, scale=2, size_multiple=16)
    with pytest.raises(HRXError, match="merge"):
        TileSpec(tile=32, overlap=4, scale=2, merge="average")


def test_backend_shape_mismatch_is_an_error():
    spec = TileSpec(tile=16, overlap=8, scale=2, size_multiple=4)
    with pytest.raises(HRXError, match="expected"):
        upscale_tiled(np.zeros((3, 20, 20), np.float32), lambda t: np.zeros((1, 3, 16, 16), np.float32), spec)


def _hrx_t(randomize: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = hrx.create_model("hrx-t", scale=2)
    if randomize:
        randomize_params(model, 0.05)
    return hrx.fuse(model.eval())


def _torch_infer(model: torch.nn.Module):
    def infer(tiles: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(tiles)).numpy()
    return infer


def test_untrained_hrx_t_tiles_exactly():
    """An untrained HRX model is bicubic upscaling (radius 2): tiling must reproduce it exactly."""
    model = _hrx_t(randomize=False)
    img = np.random.default_rng(2).random((3, 64, 80), dtype=np.float32)
    with torch.inference_mode():
        whole = model(torch.from_numpy(img)[None]).numpy()[0]
    for merge in ("crop", "blend"):
        out = upscale_tiled(img, _torch_infer(model), TileSpec(32, 16, 2, 16, 2, merge))
        assert float(np.abs(out - whole).max()) < 1e-5


def test_randomized_hrx_t_tiled_close_to_whole():
    """A randomized hrx-t has global parts (NAF channel attention pools the tile, the scan spans it):
    tiles differ from the whole image. Measured here: crop 36.4 dB, blend 37.3 dB (PSNR over the output's
    range) at tile 32 / overlap 16 on this 64x96 image; the bound leaves ~3 dB of margin."""
    model = _hrx_t(randomize=True)
    rng = np.random.default_rng(3)
    img = np.kron(rng.random((3, 16, 24), dtype=np.float32), np.ones((1, 4, 4), np.float32))  # blocky, not noise
    with torch.inference_mode():
        whole = model(torch.from_numpy(img)[None]).numpy()[0]
    assert_not_bicubic(whole[None], img[None], 2)
    scores = {}
    for merge in ("crop", "blend"):
        out = upscale_tiled(img, _torch_infer(model), TileSpec(32, 16, 2, 16, 2, merge))
        mse = float(np.mean((out - whole) ** 2))
        scores[merge] = psnr_from_mse(mse, float(np.ptp(whole)))
    print("tiled vs whole PSNR (dB):", {k: round(v, 2) for k, v in scores.items()})
    assert min(scores.values()) > 33.0
    assert scores["blend"] > scores["crop"]  # why blend is the default


def test_spec_from_model_info():
    from hrx.interface import ModelInfo

    info = ModelInfo(arch="hrx-t", scale=2, in_channels=3, out_channels=3, tile=64, batch=4, size_multiple=16,
                     tile_overlap=16)
    assert TileSpec.from_info(info) == TileSpec(64, 16, 2, 16, 4, "crop")
    assert TileSpec.from_info(info, overlap=0, merge="blend") == TileSpec(64, 0, 2, 16, 4, "blend")


def test_blend_windows_are_a_raised_cosine_cross_fade():
    """The weights themselves, not the output they give: where two tiles overlap (tile 16, overlap 8, x2:
    a 16-pixel overlap, faded over its middle 8), the right tile's weights rise as sin^2 and the left one's fall
    as cos^2 (written out here), monotone and without steps, from ~1 to ~0, the two summing to 1. Any
    weights summing to 1 give the whole-image output where the overlap covers the receptive field, so
    only this test sees the window's shape."""
    spec = TileSpec(tile=16, overlap=8, scale=2, size_multiple=4, merge="blend")
    plan = plan_axis(40, spec)
    assert plan.starts == (0, 8, 16, 24)
    (lo0, hi0, w0), (lo1, hi1, w1) = axis_windows(plan, spec)[:2]
    # left tile: output [0, 32), its right neighbour starts at 16; the fade is [20, 28), zero after
    assert (lo0, hi0, lo1) == (0, 28, 20)
    ramp = 8
    t = (np.arange(ramp) + 0.5) / ramp
    fade_in = np.sin(t * np.pi / 2) ** 2  # 0.0096, 0.0843, ..., 0.9904
    np.testing.assert_allclose(w1[:ramp], fade_in, atol=1e-12)
    np.testing.assert_allclose(w0[20:28], 1.0 - fade_in, atol=1e-12)
    assert np.all(w0[:20] == 1.0) and np.all(w1[ramp:hi1 - lo1 - ramp] == 1.0)
    steps = np.diff(np.concatenate([[0.0], w1[:ramp], [1.0]]))
    assert np.all(steps > 0) and steps.max() < 0.2  # monotone, no jump (a flat 0.5 jumps by 0.5 twice)
    assert w1[0] < 0.02 and w1[ramp - 1] > 0.98

def test_a_backend_that_yields_fewer_results_is_an_error():
    """A stream of results that ends early (one batch short) must not leave tiles at zero in an image
    reported done."""
    img = np.random.default_rng(1).random((3, 30, 41), dtype=np.float32)
    spec = TileSpec(tile=16, overlap=8, scale=2, size_multiple=4, batch=2)

    def short(batches):
        for k, b in enumerate(batches):
            if k == 2:
                return
            yield toy_whole(b)

    with pytest.raises(HRXError, match=r"backend returned 2 results for 8 batches of tiles"):
        upscale_tiled(img, lambda t: pytest.fail("infer used"), spec, infer_many=short)


@pytest.mark.parametrize("bad, counts", [(np.nan, "2 NaN and 0 Inf"), (np.inf, "0 NaN and 2 Inf")])
def test_non_finite_output_names_the_tile(bad, counts):
    """NaN or Inf from the model fails the image with the counts and the tile where it first appeared."""
    from hrx.runtime.tiling import NonFiniteOutput, upscale_whole

    img = np.random.default_rng(2).random((3, 30, 41), dtype=np.float32)
    spec = TileSpec(tile=16, overlap=8, scale=2, size_multiple=4, batch=2)
    calls = []

    def infer(tiles):
        out = toy_whole(tiles)
        calls.append(1)
        if len(calls) == 3:  # the 3rd batch: tiles 5 and 6; the second of them goes bad
            out[1, 0, 3, 4:6] = bad
        return out

    with pytest.raises(NonFiniteOutput, match=rf"the model output {counts} values \(tile 6 of 15, at x=0 y=8\); "
                                              r"nothing written$"):
        upscale_tiled(img, infer, spec)
    def whole(x):
        out = toy_whole(x)
        out[0, 0, 0, :2] = bad
        return out

    with pytest.raises(NonFiniteOutput, match=rf"{counts} values \(the whole image in one call\)"):
        upscale_whole(img, whole, spec)
    big = np.full((2, 3, 32, 32), 3e38, np.float32)  # finite values whose float32 sum overflows: not an error
    upscale_tiled(np.zeros((3, 16, 16), np.float32), lambda t: big, spec)
