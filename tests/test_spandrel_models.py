"""Third-party checkpoints through spandrel: weights-only loading, the torchvision stand-in, metadata,
ONNX Runtime vs spandrel's PyTorch, hrx upscale --engine, SPAN's Conv3XC fuse, tiled vs whole, errors.

Every network is built with spandrel's own classes (tiny configurations, perturbed weights) and saved
the way people share them (plain state dict ``.pth`` / ``.safetensors``); nothing is downloaded.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import hrx
from hrx.cli.main import app
from hrx.errors import CheckpointError
import zoo

runner = CliRunner()
CASES = [(name, s) for name, e in zoo.ZOO.items() for s in e.scales]
EXPORTED = [(n, zoo.ZOO[n].scales[i % 2]) for i, n in enumerate(zoo.ZOO)]  # one scale each keeps CI fast
SPANDREL_IDS = {"RRDBNet": "ESRGAN", "SRVGGNetCompact": "Compact", "SPAN": "SPAN", "SwinIR": "SwinIR",
                "OmniSR": "OmniSR", "RealPLKSR": "PLKSR", "SAFMN": "SAFMN"}


def _x(h: int = 32, w: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """``{(name, scale): (spandrel net, .pth path, .safetensors path)}``."""
    root = tmp_path_factory.mktemp("spandrel")
    out = {}
    for name, s in CASES:
        net = zoo.build(name, s)
        pth, st = root / f"{name}_x{s}.pth", root / f"{name}_x{s}.safetensors"
        zoo.save(net, pth)
        zoo.save(net, st)
        out[(name, s)] = (net, pth, st)
    return out


@pytest.fixture(scope="module")
def exported(saved, tmp_path_factory):
    """One ONNX export per (architecture, scale), tile 32."""
    from hrx.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("onnx")
    return {key: export_onnx(saved[key][2], root / f"{key[0]}_x{key[1]}.onnx", tile=32) for key in EXPORTED}


@pytest.mark.slow
@pytest.mark.parametrize("name,scale", CASES)
def test_load_pth_and_safetensors_match_spandrel(saved, name, scale):
    net, pth, st = saved[(name, scale)]
    x = _x(24, 40)
    with torch.no_grad():
        ref = net(x)
    assert float(ref.std()) > 1e-2  # the perturbed network is not a constant
    for path in (pth, st):
        model = hrx.load_model(path)
        assert model.arch == SPANDREL_IDS[name] and model.scale == scale
        assert model.in_channels == 3 and model.out_channels == 3 and model.tile_overlap > 0
        with torch.no_grad():
            out = model(x)
        assert out.shape == (1, 3, 24 * scale, 40 * scale)
        if model.min_size <= 24 and 24 % model.size_multiple == 0 and 40 % model.size_multiple == 0:
            torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name,scale", EXPORTED)
def test_onnx_runtime_matches_spandrel(saved, exported, name, scale):
    import onnxruntime as ort

    net, _, _ = saved[(name, scale)]
    result = exported[(name, scale)]
    info = result.info
    assert (info.arch, info.scale, info.tile, info.extra["source"]) == (SPANDREL_IDS[name], scale, 32, "spandrel")
    model = hrx.load_model(saved[(name, scale)][2])
    assert (info.min_size, info.square, info.fp16, info.bf16, info.size_multiple) == \
        (model.min_size, model.square, model.fp16, model.bf16, model.size_multiple)
    assert info.tile_overlap == min(model.tile_overlap, 16)  # at most half the tile
    from hrx.interface import ModelInfo

    assert ModelInfo.from_onnx(result.path) == info  # the requirements travel in the file
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for seed in (1, 2):
        x = _x(seed=seed)
        with torch.no_grad():
            ref = net(x).numpy()
        got = sess.run(None, {"input": x.numpy()})[0]
        assert got.shape == ref.shape
        assert float(np.abs(got - ref).max()) < 1e-4, name


def _images(root):
    root.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "rgb.png")
    Image.fromarray(rgb).convert("L").save(root / "gray.png")
    Image.fromarray(rgb).convert("RGBA").save(root / "rgba.png")


@pytest.mark.slow
@pytest.mark.parametrize("name,scale", EXPORTED)
def test_upscale_engine_rgb_gray_rgba(exported, tmp_path, name, scale):
    _images(tmp_path / "in")
    engine = exported[(name, scale)].path
    result = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--engine", str(engine),
                                 "-q"])
    assert result.exit_code == 0, result.output
    for stem, mode in (("rgb", "RGB"), ("gray", "L"), ("rgba", "RGBA")):
        with Image.open(tmp_path / "out" / f"{stem}.png") as im:
            assert im.size == (45 * scale, 37 * scale) and im.mode == mode
            assert np.asarray(im).std() > 0


@pytest.mark.slow
def test_span_conv3xc_fuses_within_1e5(saved):
    from hrx.spandrel_models.fuse import FusedConv3XC

    model = hrx.load_model(saved[("SPAN", 4)][2])
    deploy = hrx.fuse(model)
    assert not any(type(m).__name__ == "Conv3XC" for m in deploy.modules())
    assert sum(isinstance(m, FusedConv3XC) for m in deploy.modules()) == 20
    assert any(type(m).__name__ == "Conv3XC" for m in model.modules())  # the training model is untouched
    x = _x(20, 28)
    with torch.no_grad():
        unfused = model.train()(x)  # the three-branch training form (SPAN has no norm layers)
        fused = deploy(x)
    model.eval()
    assert float(unfused.std()) > 1e-2
    torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_archs_without_reparam_pass_through(saved):
    from hrx.spandrel_models.fuse import fuse_reparam

    model = hrx.load_model(saved[("SRVGGNetCompact", 2)][1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deploy = hrx.fuse(model)
    assert fuse_reparam(model.net) == 0
    assert deploy.state_dict().keys() == before.keys()
    assert all(torch.equal(deploy.state_dict()[k], v) for k, v in before.items())


@pytest.mark.slow
def test_tiled_equals_whole_within_receptive_field(saved):
    """Compact x2 (6 3x3 convs: r=6) gets overlap 4r=24, so blended tiles equal whole-image inference;
    with overlap 0 the seams differ."""
    from hrx.runtime.tiling import TileSpec, upscale_tiled
    from hrx.runtime.torch_backend import TorchBackend

    model = hrx.load_model(saved[("SRVGGNetCompact", 2)][1])
    assert model.overlap_choice.radius == 6 and model.tile_overlap == 24
    backend = TorchBackend(model, tile=48)
    image = _x(70, 90, seed=3)[0].numpy()
    whole = backend.infer(image[None])[0]
    tiled = upscale_tiled(image, backend.infer, TileSpec(48, model.tile_overlap, 2, merge="blend"))
    seams = upscale_tiled(image, backend.infer, TileSpec(48, 0, 2, merge="blend"))
    assert float(np.abs(tiled - whole).max()) < 1e-5
    assert float(np.abs(seams - whole).max()) > 1e-3


def test_unknown_checkpoint_one_line(tmp_path):
    path = tmp_path / "mystery.pth"
    torch.save({"foo.weight": torch.rand(3, 3), "bar": torch.rand(2)}, path)
    with pytest.raises(CheckpointError, match="not an HRX checkpoint and not an architecture spandrel"):
        hrx.load_model(path)
    result = runner.invoke(app, ["export", str(path), "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip() and not ln.startswith("hrx: torchvision")]
    assert len(lines) == 1 and "mystery.pth" in lines[0] and "ESRGAN" in lines[0] and "hrx-s" in lines[0]
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_pickle_with_code_is_refused(tmp_path, saved):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    net, _, _ = saved[("SPAN", 2)]
    path = tmp_path / "evil.pth"
    torch.save({"params_ema": net.state_dict(), "trainer": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        hrx.load_model(path)


@pytest.mark.slow
def test_wrapped_state_dict_loads(tmp_path, saved):
    """BasicSR / Real-ESRGAN files wrap the weights in ``params_ema``; chaiNNer-style ``module.`` prefixes."""
    net, _, _ = saved[("RRDBNet", 4)]
    path = tmp_path / "wrapped.pth"
    torch.save({"params_ema": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    model = hrx.load_model(path)
    with torch.no_grad():
        torch.testing.assert_close(model(_x()), net(_x()), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_export_failure_names_arch_and_op(tmp_path, monkeypatch, saved):
    from hrx.errors import HRXError
    from hrx.export.onnx_export import export_onnx

    model = hrx.load_model(saved[("SRVGGNetCompact", 2)][1])
    monkeypatch.setattr(model, "_call", lambda net, x: torch.linalg.svd(net(x))[0])
    with pytest.raises(HRXError) as err:
        export_onnx(model, tmp_path / "bad.onnx", tile=16)
    msg = str(err.value)
    assert "\n" not in msg and "Compact" in msg and "svd" in msg
    assert not (tmp_path / "bad.onnx").exists()


def test_models_lists_spandrel_archs():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "third-party" in text
    for arch in ("ESRGAN", "Compact", "SPAN", "SwinIR", "OmniSR", "PLKSR", "SAFMN"):
        assert f" {arch}" in text


STAND_IN_PROBE = textwrap.dedent("""
    import sys, threading
    from hrx.spandrel_models.spandrel_import import import_spandrel, stand_in_notice
    got, barrier = [], threading.Barrier(8)  # eight threads import at once: one import, one module for all
    def worker():
        barrier.wait()
        got.append(import_spandrel())
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    sp = got[0]
    assert sp is not None and len(got) == 8 and all(m is sp for m in got)
    assert "torchvision" not in sys.modules, "the stand-in leaked"
    from spandrel.architectures.RestoreFormer import RestoreFormer  # noqa: F401 - imports through the stand-in
    import spandrel.architectures.RestoreFormer as rf, torch
    x = torch.rand(3, 4, 4)
    y = rf.tv_normalize(x, (0.5, 0.4, 0.3), (0.2, 0.3, 0.4))
    assert torch.allclose(y[1], (x[1] - 0.4) / 0.3)
    print("NOTICE", stand_in_notice())
""")


def test_spandrel_imports_with_broken_torchvision(tmp_path):
    """A torchvision whose C extension fails (CUDA build next to a CPU torch) must not stop spandrel."""
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise RuntimeError("operator torchvision::nms does not exist")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", STAND_IN_PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "operator torchvision::nms does not exist" in proc.stdout and "stand-in" in proc.stdout


def test_stand_in_rotate_fails_loudly():
    from hrx.spandrel_models.spandrel_import import InterpolationMode, rotate

    assert InterpolationMode.BILINEAR.value == "bilinear"
    with pytest.raises(RuntimeError, match="LaMa"):
        rotate(torch.rand(3, 4, 4), 90.0)


@pytest.mark.slow
def test_verify_and_upscale_model_take_a_spandrel_checkpoint(saved, exported, tmp_path):
    """hrx verify --checkpoint (Polygraphy, unfused spandrel model vs ONNX Runtime) and hrx upscale --model."""
    key = next(k for k in EXPORTED if k[0] == "SPAN")
    _, pth, _ = saved[key]
    result = runner.invoke(app, ["verify", str(exported[key].path), "--checkpoint", str(pth), "--backends", "onnxrt"])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "max_abs=" in result.output
    _images(tmp_path / "in")
    result = runner.invoke(app, ["upscale", str(tmp_path / "in" / "rgb.png"), "-o", str(tmp_path / "out"),
                                 "--model", str(pth), "--tile", "24", "-q"])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out" / "rgb.png") as im:
        assert im.size == (45 * key[1], 37 * key[1])
