"""hrx export / hrx verify: ONNX Runtime vs the unfused PyTorch model, both ops modes, CLI errors."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

import hrx
from conftest import assert_not_bicubic, randomize_params, scan_inputs
from hrx.cli.main import app
from hrx.export.onnx_export import export_onnx
from hrx.interface import ModelInfo

ATOL = 1e-4
runner = CliRunner()


def _checkpoint(tmp: Path, arch: str, scale: int, channels: int = 3, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = hrx.create_model(arch, scale=scale, in_channels=channels)
    randomize_params(model, 0.05)
    return hrx.save_model(model, tmp / f"{arch}-x{scale}-c{channels}-s{seed}.pt")


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def cli_export(tmp_module):
    """hrx-t x2 (perturbed) exported once through `hrx export` at tile 32: ``(checkpoint, onnx, CLI output)``,
    shared by the verify tests and the reproducibility test (each export is many seconds here)."""
    ckpt = _checkpoint(tmp_module, "hrx-t", 2, seed=4)
    out = tmp_module / "cli.onnx"
    res = runner.invoke(app, ["export", str(ckpt), "-o", str(out), "--tile", "32"])
    assert res.exit_code == 0, res.output
    return ckpt, out, res.output


@pytest.mark.slow
@pytest.mark.parametrize("ops", ["native", "plugin"])
# every scale on hrx-t (the scale changes only the upsampler); hrx-s at x2 adds what hrx-t lacks: shifted
# windows and several scans per stage, window 8, scan chunk 32
@pytest.mark.parametrize("arch,scale", [("hrx-t", 1), ("hrx-t", 2), ("hrx-t", 4), ("hrx-s", 2)])
def test_onnxruntime_matches_unfused_pytorch(tmp_module, arch, scale, ops, request):
    if (arch, scale) == ("hrx-t", 2):  # the session's export of the same checkpoint (seed 0), tile 32
        ckpt, result = request.getfixturevalue("hrx_t_x2"), request.getfixturevalue(f"hrx_t_x2_{ops}")
    else:
        ckpt = _checkpoint(tmp_module, arch, scale)
        tile = 2 * hrx.load_model(ckpt).size_multiple
        result = export_onnx(ckpt, tmp_module / f"{arch}-x{scale}-{ops}.onnx", tile=tile, ops=ops)
    model = hrx.load_model(ckpt)
    tile, out = 2 * model.size_multiple, result.path
    x = np.random.default_rng(1).random((1, 3, tile, tile), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    got = _ort(out, x)
    assert got.shape == (1, 3, tile * scale, tile * scale)
    assert_not_bicubic(ref, x, scale)
    err = float(np.abs(got - ref).max())
    assert err <= ATOL, f"{arch} x{scale} {ops}: max abs error {err:.2e}"
    info = ModelInfo.from_onnx(out)
    assert (info.arch, info.scale, info.tile, info.ops, info.size_multiple) == (arch, scale, tile, ops, model.size_multiple)
    assert len(info.checkpoint_sha256) == 64 and info.tile_overlap > 0
    proto = onnx.load(str(out))
    custom = {n.op_type for n in proto.graph.node if n.domain == "hrx"}
    if ops == "native":
        assert not custom and not proto.functions
        assert {n.domain for n in proto.graph.node} <= {"", "ai.onnx"}
    else:
        assert custom == {"SelectiveScan", "MoETop1"}
        assert {f.name for f in proto.functions} == custom
    assert result.simplifier in ("onnxsim", "onnxslim"), result.simplifier  # neither failed


@pytest.mark.slow
def test_plugin_nodes_carry_trt_attributes(tmp_module):
    from hrx.blocks.moe import SparseMoE
    from hrx.blocks.ssm import SSMixer

    model = hrx.load_model(_checkpoint(tmp_module, "hrx-t", 2))
    deploy = hrx.fuse(model)
    out = tmp_module / "attrs.onnx"
    export_onnx(deploy, out, tile=32, ops="plugin")
    # the custom ops were chosen on the exporter's own copy: no model in the process is rerouted
    for m in (model, deploy):
        assert {s.scan_impl for s in m.modules() if isinstance(s, SSMixer)} == {"chunked"}
        assert {s.combine_impl for s in m.modules() if isinstance(s, SparseMoE)} == {"reference"}
    proto = onnx.load(str(out))
    for node in (n for n in proto.graph.node if n.domain == "hrx"):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_version"] == b"1" and attrs["plugin_namespace"] == b"hrx"
        if node.op_type == "SelectiveScan":
            assert attrs["chunk"] > 0 and len(node.input) == 6


@pytest.mark.slow
def test_simplified_equals_unsimplified_and_export_is_reproducible(tmp_module, cli_export):
    ckpt, a, _ = cli_export  # the CLI's export with its defaults
    b, raw = tmp_module / "b.onnx", tmp_module / "raw.onnx"
    export_onnx(ckpt, b, tile=32)
    export_onnx(ckpt, raw, tile=32, simplify_graph=False)
    ga, gb = onnx.load(str(a)).graph, onnx.load(str(b)).graph
    assert ga.SerializeToString() == gb.SerializeToString()
    x = np.random.default_rng(2).random((1, 3, 32, 32), dtype=np.float32)
    assert np.abs(_ort(a, x) - _ort(raw, x)).max() <= 1e-5
    assert len(ga.node) < len(onnx.load(str(raw)).graph.node)


@pytest.mark.slow
def test_batch_and_channels(tmp_module):
    ckpt = _checkpoint(tmp_module, "hrx-t", 2, channels=4)
    out = tmp_module / "b2.onnx"
    export_onnx(ckpt, out, tile=32, batch=2)
    x = np.random.default_rng(3).random((2, 4, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref = hrx.load_model(ckpt)(torch.from_numpy(x)).numpy()
    assert np.abs(_ort(out, x) - ref).max() <= ATOL


@pytest.mark.slow
def test_cli_export_and_verify_pass_then_fail_on_corrupted_weight(tmp_module, cli_export):
    ckpt, out, output = cli_export
    assert "MACs per tile" in output and "onnxsim" in output
    res = runner.invoke(app, ["verify", str(out), "--checkpoint", str(ckpt), "--backends", "onnxrt"])
    assert res.exit_code == 0, res.output
    assert "PASS" in res.output and "PSNR" in res.output

    bad, weight = _corrupt_a_stage3_weight(out, tmp_module / "bad.onnx")
    res = runner.invoke(app, ["verify", str(bad), "--checkpoint", str(ckpt), "--backends", "onnxrt", "--bisect"])
    assert res.exit_code == 1
    assert "FAIL" in res.output and "output 'output'" in res.output
    assert weight in res.output  # bisect names the corrupted node's weight
    res = runner.invoke(app, ["verify", str(bad), "--checkpoint", str(ckpt), "--backends", "upscale:onnxrt-cpu"])
    assert res.exit_code == 1 and "upscale:onnxrt-cpu" in res.output and "FAIL" in res.output


@pytest.mark.slow
def test_cli_verify_html_page(tmp_module, cli_export):
    """--html: the page carries the terminal's verdict and one section per tile and backend; the numbers are
    those of the outputs (a corrupted weight: FAIL, several 8-bit levels off)."""
    ckpt, out, _ = cli_export
    bad, _ = _corrupt_a_stage3_weight(out, tmp_module / "bad-html.onnx")
    page = tmp_module / "verify.html"
    res = runner.invoke(app, ["verify", str(bad), "--checkpoint", str(ckpt), "--backends", "onnxrt", "--html", str(page)])
    assert res.exit_code == 1 and f"page: {page}" in res.output, res.output
    text = page.read_text()
    assert 'id="verdict">FAIL<' in text and text.count('<div class="case fail">') == 2  # 2 random tiles
    assert text.count("data:image/png;base64,") == 2 * (1 + 6)
    levels = [float(v) for v in re.findall(r"\(([0-9.e+-]+) 8-bit levels; limit", text)]
    assert len(levels) == 2 and min(levels) > 1.0, levels


def _corrupt_a_stage3_weight(path: Path, bad: Path, factor: float = 1.5) -> tuple[Path, str]:
    """A copy of ``path`` with one stage-3 conv weight scaled by ``factor`` (in its own type); returns it and
    the weight's name."""
    proto = onnx.load(str(path))
    target = next(t for t in proto.graph.initializer if t.name.startswith("stage3") and len(t.dims) == 4)
    arr = onnx.numpy_helper.to_array(target)
    target.CopyFrom(onnx.numpy_helper.from_array((arr * factor).astype(arr.dtype), target.name))
    onnx.save(proto, str(bad))
    return bad, target.name


@pytest.mark.slow
def test_bisect_re_exports_with_the_files_own_settings(tmp_module):
    """An FP16 file exported without the simplifier: the bisect's trusted reference is a fresh export with
    those settings (an FP32, simplified re-export is another graph, with few tensors in common)."""
    ckpt = _checkpoint(tmp_module, "hrx-t", 2, seed=6)
    out = tmp_module / "half-raw.onnx"
    export_onnx(ckpt, out, tile=32, precision="fp16", simplify_graph=False)
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert (props["precision"], props["simplify"], "graph_passes" in props) == ("fp16", "false", False)
    bad, weight = _corrupt_a_stage3_weight(out, tmp_module / "half-raw-bad.onnx", 4.0)  # beyond FP16's tolerance
    res = runner.invoke(app, ["verify", str(bad), "--checkpoint", str(ckpt), "--backends", "onnxrt", "--bisect"])
    assert res.exit_code == 1 and "FAIL" in res.output, res.output
    assert "first divergence" in res.output and weight in res.output, res.output


@pytest.mark.slow
def test_verify_with_image_tiles(tmp_module, cli_export):
    from PIL import Image

    ckpt, out, _ = cli_export
    folder = tmp_module / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(folder / "a.png")
    Image.fromarray((rng.random((20, 24)) * 255).astype(np.uint8)).save(folder / "small.png")  # smaller than a tile
    from polygraphy.logger import G_LOGGER

    before = G_LOGGER.module_severity.get()
    res = runner.invoke(app, ["verify", str(out), "--checkpoint", str(ckpt), "--backends", "onnxrt", "--images", str(folder)])
    assert res.exit_code == 0, res.output
    assert "4 input batches" in res.output
    assert G_LOGGER.module_severity.get() == before  # verify quiets Polygraphy only while it runs
    # the backends `hrx upscale` opens, through the same runner interface
    res = runner.invoke(app, ["verify", str(out), "--checkpoint", str(ckpt), "--backends",
                              "upscale:onnxrt-cpu,upscale:openvino"])
    assert res.exit_code == 0, res.output
    lines = [l for l in res.output.splitlines() if "upscale:" in l]
    assert [l.split()[0] for l in lines] == ["upscale:onnxrt-cpu", "upscale:openvino"] and all("PASS" in l for l in lines)
    res = runner.invoke(app, ["verify", str(out), "--checkpoint", str(ckpt), "--backends", "onnxrt,nope"])
    assert res.exit_code != 0 and "unknown backend 'nope'; choose from onnxrt, fp16-ref, trt" in res.output


def _one_line_error(res) -> str:
    lines = [l for l in (res.output or "").strip().splitlines() if l.strip()]
    assert res.exit_code != 0
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    return lines[0]


def test_export_bad_inputs(tmp_path):  # one line each, non-zero exit, nothing left behind
    out = tmp_path / "o.onnx"
    line = _one_line_error(runner.invoke(app, ["export", str(tmp_path / "missing.pt"), "-o", str(out)]))
    assert "missing.pt" in line
    junk = tmp_path / "junk.pt"
    junk.write_text("hello, not a checkpoint")
    assert "junk.pt" in _one_line_error(runner.invoke(app, ["export", str(junk), "-o", str(out)]))
    ckpt = _checkpoint(tmp_path, "hrx-t", 2)
    line = _one_line_error(runner.invoke(app, ["export", str(ckpt), "-o", str(out), "--tile", "40"]))
    assert "size_multiple 16" in line and "32 or 48" in line
    line = _one_line_error(runner.invoke(app, ["export", str(ckpt), "-o", str(tmp_path / "nodir" / "o.onnx"), "--tile", "32"]))
    assert "does not exist" in line
    # an unwritable folder (simulated: this suite may run as root, which ignores permissions)
    import hrx.export.onnx_export as ex

    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = ex.os.access
    ex.os.access = lambda p, mode: False if Path(p) == ro else real_access(p, mode)
    try:
        line = _one_line_error(runner.invoke(app, ["export", str(ckpt), "-o", str(ro / "o.onnx"), "--tile", "32"]))
    finally:
        ex.os.access = real_access
    assert "not writable" in line and not list(ro.iterdir())
    assert not out.exists() and not list(tmp_path.rglob("*.tmp"))


def test_simplifier_failures_are_reported_with_their_reason(monkeypatch, caplog):
    from onnx import helper

    from hrx.export import onnx_export

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)

    def fail(message):
        def run(_model):
            raise RuntimeError(message + "\nsecond line")
        return run

    monkeypatch.setattr(onnx_export, "_onnxsim", fail("onnxsim broke"))
    out, which = onnx_export.simplify(model)
    assert which.startswith("onnxslim (onnxsim failed: onnxsim broke)") and "second line" not in which
    monkeypatch.setattr(onnx_export, "_onnxslim", fail("onnxslim broke"))
    caplog.clear()
    with caplog.at_level("WARNING", logger="hrx.export"):
        out, which = onnx_export.simplify(model)
    assert out is model and which == "none (onnxsim failed: onnxsim broke; onnxslim failed: onnxslim broke)"
    assert [r.getMessage() for r in caplog.records] == [
        "onnxsim failed, graph tried with onnxslim: onnxsim broke",
        "onnxslim failed, graph left unsimplified: onnxslim broke"]


@pytest.mark.parametrize("b, H, P, L, N, chunk", [(2, 3, 4, 64, 5, 16), (4, 2, 16, 96, 8, 32), (1, 1, 8, 32, 4, 32)])
def test_selective_scan_local_function_matches_the_reference(b, H, P, L, N, chunk):
    """The hrx::SelectiveScan node as ONNX Runtime runs it (its local function, inlined), channels
    first (x [b, H, P, L], dt [b, H, L], B, C [b, N, L]), against the sequential PyTorch scan."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from hrx.blocks.ssm import selective_scan_ref
    from hrx.export.functions import attach_functions

    x, dt, A, B, C, D = scan_inputs(b, L, H, P, N, seed=L)
    feeds = dict(zip("x dt A B C D".split(), (t.numpy() for t in (x, dt, A, B, C, D))))
    inputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape)) for k, v in feeds.items()]
    node = helper.make_node("SelectiveScan", list(feeds), ["y"], domain="hrx", chunk=chunk, plugin_version="1",
                            plugin_namespace="hrx")
    graph = helper.make_graph([node], "scan", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert attach_functions(model) == ["SelectiveScan"]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, feeds)[0]
    want = selective_scan_ref(x, dt, A, B, C, D).numpy()
    assert got.shape == (b, H, P, L)
    assert np.abs(got - want).max() <= 1e-5 * max(1.0, np.abs(want).max())


def test_verify_counts_nan_and_inf_and_fails_on_them():
    """A NaN output compared directly reads as max_abs 0 and PSNR inf (``max(0.0, nan)`` is 0.0): verify
    counts NaN / Inf instead, fails the backend, and prints the counts, never 0 / inf for them."""
    from hrx.export.compare import BackendReport, worst_metrics

    ref = np.linspace(0, 1, 48, dtype=np.float32).reshape(1, 3, 4, 4)
    nan = np.full_like(ref, np.nan)
    (a, r, p), n_nan, n_inf = worst_metrics([(ref, nan), (ref, ref + 0.01)])
    assert (n_nan, n_inf) == (48, 0) and abs(a - 0.01) < 1e-6 and 39 < p < 41
    half = ref.copy()
    half[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    worst, n_nan, n_inf = worst_metrics([(ref, half)])
    assert (n_nan, n_inf) == (1, 2) and worst[0] == 0.0  # the finite values are equal
    worst, n_nan, n_inf = worst_metrics([(ref, nan)])
    assert all(np.isnan(worst)) and n_nan == 48
    line = BackendReport("openvino", *worst, passed=False, nan=n_nan, inf=n_inf).line()
    assert "FAIL  NaN=48  Inf=0  (no finite value" in line and "PSNR=inf" not in line and "max_abs=0" not in line
