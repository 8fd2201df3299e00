"""The bundled models' shipped ONNX files (hrx/weights/NAME.onnx, written by ``python -m hrx.export.bundle``):
they are exports of the checkpoints beside them (sha256 in their metadata, same numbers as PyTorch), they
match a fresh export, and the runtime runs them as the default model without exporting anything."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import hrx
from hrx.checkpoint import BUNDLED_TILE, bundled_models, bundled_onnx, read_checkpoint
from hrx.errors import MissingDependencyError
from hrx.interface import ModelInfo
from hrx.paths import file_sha256
from hrx.runtime import factory
from hrx.runtime.onnxrt import create_session

REGENERATE = "regenerate them with `python -m hrx.export.bundle`"


def _photo_tile(tile: int, seed: int = 0) -> np.ndarray:
    """A smooth-plus-texture tile [1, 3, tile, tile] in [0, 1] (photo-like: gradients, edges, noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:tile, 0:tile] / tile
    base = np.stack([0.5 + 0.4 * np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)])
    edges = (((x * 8).astype(int) + (y * 5).astype(int)) % 2) * 0.2
    tile_ = base * 0.8 + edges + rng.normal(0, 0.03, base.shape)
    return np.clip(tile_, 0, 1).astype(np.float32)[None]


def _run(path, tile: np.ndarray) -> np.ndarray:
    session = create_session(path, threads=1)
    return session.run(None, {session.get_inputs()[0].name: tile})[0]


@pytest.mark.parametrize("name", ["default-x1", "default-x2", "default-x4"])
def test_shipped_onnx_names_the_bundled_checkpoint(name):
    assert name in bundled_models() and bundled_onnx(name).is_file(), f"hrx/weights/{name}.onnx is missing: {REGENERATE}"
    ckpt = bundled_models()[name]
    info = ModelInfo.from_onnx(bundled_onnx(name))
    assert info.checkpoint_sha256 == file_sha256(ckpt), f"{name}.onnx was exported from other weights: {REGENERATE}"
    arch, config, _, _ = read_checkpoint(ckpt)
    assert (info.arch, info.scale, info.tile, info.batch, info.ops, info.precision) == \
        (arch, config["scale"], BUNDLED_TILE, 1, "native", "fp32")
    assert factory.DEFAULT_TILE_CPU == BUNDLED_TILE


@pytest.mark.slow
def test_shipped_default_x4_computes_what_its_checkpoint_does():
    """default-x4 against PyTorch (default-x2 is compared with a fresh export below)."""
    name = "default-x4"
    ckpt = bundled_models()[name]
    info = ModelInfo.from_onnx(bundled_onnx(name))
    tile = _photo_tile(BUNDLED_TILE)
    got = _run(bundled_onnx(name), tile)
    import torch

    with torch.no_grad():
        want = hrx.load_model(ckpt)(torch.from_numpy(tile)).numpy()
    err = float(np.abs(got - want).max())
    assert err < 2e-4, f"{name}.onnx differs from its checkpoint in PyTorch by {err:.2e}"
    up = np.repeat(np.repeat(tile, info.scale, axis=2), info.scale, axis=3)
    assert float(np.abs(want - up).mean()) > 1e-3, "the reference is a trivial upscale: the check proves nothing"


@pytest.mark.slow
def test_shipped_onnx_matches_a_fresh_export_and_is_the_default(tmp_path, monkeypatch):
    """default-x2: the shipped file against the export that default_engine makes when no file is shipped
    (the same graph, weights and numbers); then the shipped file is what the default path opens."""
    name = "default-x2"
    shipped = bundled_onnx(name)
    monkeypatch.setenv("HRX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("hrx.checkpoint.bundled_onnx", lambda n: tmp_path / "none" / f"{n}.onnx")
    lines = []
    fresh = factory.default_engine(name, log=lines.append)
    assert fresh.parent == tmp_path / "cache" / "onnx" and len(lines) == 1 and "exporting" in lines[0]
    stamp = fresh.stat().st_mtime_ns
    assert factory.default_engine(name) == fresh and fresh.stat().st_mtime_ns == stamp  # exported once, cached

    a, b = onnx.load(str(shipped)), onnx.load(str(fresh))
    assert [(n.op_type, n.domain) for n in a.graph.node] == [(n.op_type, n.domain) for n in b.graph.node], \
        f"the exporter now writes another graph: {REGENERATE}"
    wa = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    wb = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_allclose(wa[k], wb[k], rtol=0, atol=1e-6, err_msg=f"initializer {k}: {REGENERATE}")
    assert {p.key: p.value for p in a.metadata_props} == {p.key: p.value for p in b.metadata_props}
    tile = _photo_tile(BUNDLED_TILE, seed=1)
    np.testing.assert_allclose(_run(shipped, tile), _run(fresh, tile), rtol=0, atol=1e-6)

    monkeypatch.undo()
    monkeypatch.setenv("HRX_CACHE_DIR", str(tmp_path / "cache2"))
    monkeypatch.setattr(factory, "DEFAULT_MODEL", name)
    assert factory.default_engine(name) == shipped
    # nothing given: the bundled default (FP32 asked: the BF16 gate has tests of its own)
    backend = factory.open_backend(factory.BackendRequest(log=lines.append, precision="fp32"))
    try:
        assert (backend.info.scale, backend.info.tile) == (2, BUNDLED_TILE)
        assert backend.info.checkpoint_sha256 == file_sha256(bundled_models()[name])
    finally:
        backend.close()
    assert not (tmp_path / "cache2" / "onnx").exists() and len(lines) == 1, "the shipped file needs no export"


def test_a_shipped_file_from_other_weights_is_not_used(tmp_path, monkeypatch):
    """A checkpoint whose sha256 differs from the shipped file's metadata is exported anew; without PyTorch
    that is the one-line error naming the extra."""
    stale = tmp_path / "weights" / "default-x2.onnx"
    stale.parent.mkdir()
    model = onnx.load(str(bundled_onnx("default-x2")))
    for p in model.metadata_props:
        if p.key == "checkpoint_sha256":
            p.value = "0" * 64
    onnx.save(model, str(stale))
    monkeypatch.setenv("HRX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("hrx.checkpoint.bundled_onnx", lambda n: tmp_path / "weights" / f"{n}.onnx")
    monkeypatch.setattr("hrx.extras.installed", lambda module: module != "torch")
    with pytest.raises(MissingDependencyError) as e:
        factory.default_engine("default-x2")
    assert str(e.value) == ("bundled model default-x2 at tile 128 is not shipped as ONNX: exporting it needs "
                            "PyTorch: pip install 'hrx[export]'")
    with pytest.raises(MissingDependencyError):  # another tile than the shipped one: the same
        factory.default_engine("default-x4", tile=64)
    assert not (tmp_path / "cache").exists()


# name, photo side before the JPEG, JPEG quality, the least gain (dB PSNR-Y) over the baseline
JPEG_CASES = [("default-x4", 128, 70, 0.25), ("default-x2", 256, 70, 0.5), ("default-x1", 512, 40, 0.5)]


@pytest.mark.parametrize("name, side, quality, least", JPEG_CASES)
def test_bundled_model_by_name_on_a_jpeg_beats_its_baseline(tmp_path, name, side, quality, least):
    """`hrx upscale photo.jpg --engine NAME`: the bundled model named, from its shipped ONNX file, on a
    held-out photo downscaled and saved as JPEG: closer to the photo than Pillow's bicubic of the same JPEG
    (x1: than the JPEG itself; the runtime must not skip an x1 model because the output is no larger).
    Measured gains: x4 +0.49, x2 +1.04, x1 +1.10 dB."""
    from PIL import Image
    from typer.testing import CliRunner

    from hrx.cli.main import app
    from hrx.data import skimage_photos
    from hrx.metrics import psnr_y

    photo = next(r for r in skimage_photos() if r.name == "astronaut")  # held out of the bundled models' training
    clean = Image.open(photo.path).convert("RGB")
    assert clean.size == (512, 512)
    (tmp_path / "in").mkdir()
    clean.resize((side, side), Image.Resampling.BICUBIC).save(tmp_path / "in" / "a.jpg", quality=quality)
    r = CliRunner().invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--engine",
                                 name, "--precision", "fp32", "--workers", "1"])
    assert r.exit_code == 0, r.output
    jpeg = Image.open(tmp_path / "in" / "a.jpg").convert("RGB")
    out = np.asarray(Image.open(tmp_path / "out" / "a.png").convert("RGB"))
    baseline = np.asarray(jpeg.resize((512, 512), Image.Resampling.BICUBIC))
    assert out.shape == baseline.shape == (512, 512, 3)

    def batch(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float32)[None].transpose(0, 3, 1, 2) / 255

    ref, border = batch(np.asarray(clean)), 512 // side
    gain = psnr_y(batch(out), ref, border) - psnr_y(batch(baseline), ref, border)
    assert gain > least, gain
