"""Precision in the graph: `hrx export --precision fp16` (FP32 islands as Casts) and its FP16
numerics checked on the CPU with per-op rounding (`fp16-ref`), on the bundled trained models.

The FP32 references are the trained bundled models (default-x2, default-x4), not untrained ones
(an untrained HRX model is exactly bicubic); each test also checks the model differs from bicubic.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto

import hrx
from hrx.export.onnx_export import export_onnx
from hrx.export.precision import NAIVE_RULES, convert_precision
from hrx.export.reference import HalfReference
from hrx.export.compare import _metrics
from tests.graphs import compute_types, norm_softmax_graph, tensor_types

FP32, FP16, BF16 = TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16


def photo_tiles(tile: int, count: int) -> np.ndarray:
    """``count`` textured ``tile``-sized crops of skimage's bundled photos, [count, 3, tile, tile]."""
    import skimage.data as data

    tiles = []
    for k, name in enumerate(("astronaut", "coffee", "chelsea", "rocket")[:count]):
        img = np.asarray(getattr(data, name)(), dtype=np.float32)[..., :3] / 255.0
        y, x = (img.shape[0] // 3 + 17 * k) // 8 * 8, (img.shape[1] // 3 + 29 * k) // 8 * 8
        tiles.append(img[y:y + tile, x:x + tile].transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(tiles))


@pytest.fixture(scope="module")
def x2_fp16(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "x2.fp16.onnx"
    result = export_onnx("default-x2", path, tile=64, precision="fp16")
    return path, result


@pytest.fixture(scope="module")
def x2_fp32_32(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "x2_32.onnx"
    export_onnx("default-x2", path, tile=32)
    return onnx.load(str(path))


@pytest.mark.slow
def test_fp16_export_types_read_from_the_graph(x2_fp16):
    path, result = x2_fp16
    model = onnx.load(str(path))
    types = tensor_types(model)
    g = model.graph
    assert [types[i.name] for i in g.input] == [FP32] and [types[o.name] for o in g.output] == [FP32]
    inits = {t.name: t for t in g.initializer}
    sizes = {FP16: 0, FP32: 0}
    for n in g.node:  # conv weights: island constants (position biases, masks) may stay FP32
        if n.op_type == "Conv" and n.input[1] in inits:
            t = inits[n.input[1]]
            sizes[t.data_type] += int(np.prod(t.dims))
    assert sizes[FP16] > 0.9 * (sizes[FP16] + sizes[FP32]), f"conv weights are half precision: {sizes}"
    computes = compute_types(model)
    ops = {n.name: n.op_type for n in g.node}
    by_type: dict[str, set[int]] = {}
    for name, t in computes.items():
        by_type.setdefault(ops[name], set()).add(t)
    for op in ("Softmax", "ReduceMean", "Exp", "CumSum", "Softplus", "Pow", "Sqrt", "Reciprocal"):
        assert by_type[op] == {FP32}, f"every {op} computes in FP32"
    for n in g.node:  # ... and writes FP32 (its consumers see the FP32 result)
        if n.op_type in ("Softmax", "ReduceMean", "Exp", "CumSum"):
            assert types[n.output[0]] == FP32, n.name
    assert FP16 in by_type["Conv"] and FP16 in by_type["MatMul"], "the heavy ops run in half"
    half_convs = sum(1 for n in g.node if n.op_type == "Conv" and computes[n.name] == FP16)
    assert half_convs > 0.8 * sum(1 for n in g.node if n.op_type == "Conv")
    # the softmax's logits: the MatMul feeding each attention softmax computes in FP32
    producer = {o: n for n in g.node for o in n.output}
    for n in g.node:
        if n.op_type == "Softmax":
            p = producer[n.input[0]]
            while p.op_type not in ("MatMul", "Conv", "Gemm"):
                p = producer[[i for i in p.input if i in producer][0]]
            assert computes[p.name] == FP32, f"{p.name} computes the logits of {n.name}"
    props = {p.key: p.value for p in model.metadata_props}
    assert props["precision"] == "fp16" and props["io_precision"] == "fp32"
    islands = json.loads(props["fp32_islands"])
    assert {"softmax", "norm", "scan", "router"} <= {k for k, v in islands.items() if v}
    assert result.info.precision == "fp16" and "FP32 islands" in result.summary()


@pytest.mark.slow
def test_fp16_reference_rounds_every_op(x2_fp16):
    path, _ = x2_fp16
    ref = HalfReference(path)
    x = photo_tiles(64, 1)
    results = ref.evaluator.run(None, {"input": x.astype(np.float32)}, intermediate=True)
    computes = compute_types(ref.model)
    g = ref.model.graph
    conv = next(n for n in g.node if n.op_type == "Conv" and computes[n.name] == FP16)
    soft = next(n for n in g.node if n.op_type == "Softmax")
    assert results[conv.output[0]].dtype == np.float16
    assert results[soft.output[0]].dtype == np.float32
    declared = tensor_types(ref.model)
    halves = [k for k, t in declared.items() if t == FP16 and k in results]
    assert halves and all(results[k].dtype == np.float16 for k in halves)


@pytest.mark.slow
@pytest.mark.parametrize("name, tile, count", [("default-x2", 64, 2), ("default-x4", 32, 2)])
def test_bundled_fp16_within_45_db_of_fp32_pytorch_on_photos(name, tile, count, x2_fp16, tmp_path):
    if name == "default-x2":
        path = x2_fp16[0]
    else:
        path = tmp_path / "x4.fp16.onnx"
        export_onnx(name, path, tile=tile, precision="fp16")
    model = hrx.load_model(name).eval()
    tiles = photo_tiles(tile, count)
    ref = HalfReference(path)
    for t in tiles:
        x = t[None]
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        bicubic = F.interpolate(torch.from_numpy(x), scale_factor=model.scale, mode="bicubic",
                                align_corners=False).numpy()
        got = ref.run({"input": x})[0].astype(np.float32)
        assert np.isfinite(got).all()
        psnr = _metrics(want, got)[2]
        assert psnr >= 45.0, f"{name}: FP16 graph at {psnr:.2f} dB of FP32 PyTorch"
        assert psnr > _metrics(want, bicubic)[2] + 10, "the trained model must differ from bicubic far more"
        assert _metrics(want, got.astype(np.float64))[0] > 0, "half precision changes something"


@pytest.mark.slow
def test_overflow_probe_naive_half_breaks_hrx_islands_hold(x2_fp32_32):
    """Inputs scaled x1000 drive the norm variances past 65504: a whole-graph half conversion
    gives inf/NaN, the islands keep the result finite and close to the FP32 graph."""
    import onnxruntime as ort

    naive, _ = convert_precision(x2_fp32_32, "fp16", rules=NAIVE_RULES)
    ours, plan = convert_precision(x2_fp32_32, "fp16")
    assert json.loads({p.key: p.value for p in naive.metadata_props}["fp32_islands"]).keys() <= set(NAIVE_RULES)
    x = (photo_tiles(32, 1) * 1000.0).astype(np.float32)
    sess = ort.InferenceSession(x2_fp32_32.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": x})[0].astype(np.float64)
    bad = HalfReference(naive).run({"input": x})[0].astype(np.float64)
    good = HalfReference(ours).run({"input": x})[0].astype(np.float64)
    scale = np.abs(want).max()
    assert not np.isfinite(bad).all() or np.abs(bad - want).max() / scale > 0.05
    assert np.isfinite(good).all()
    assert np.abs(good - want).max() / scale < 0.01


@pytest.mark.slow
def test_io_fp16_and_bf16_graphs(x2_fp32_32):
    half_io, plan = convert_precision(x2_fp32_32, "fp16", io="fp16")
    onnx.checker.check_model(half_io, full_check=True)
    types = tensor_types(half_io)
    assert types["input"] == FP16 and types["output"] == FP16 and plan.io == "fp16"
    x = photo_tiles(32, 1)
    a = HalfReference(half_io).run({"input": x})[0]
    assert a.dtype == np.float16 and np.isfinite(a).all()

    from hrx.errors import HRXError

    with pytest.raises(HRXError, match="bf16 needs opset 22"):
        convert_precision(x2_fp32_32, "bf16")


def _tiny_opset22() -> onnx.ModelProto:
    return norm_softmax_graph(22)


def test_bf16_graph_types_and_islands():
    bf, plan = convert_precision(_tiny_opset22(), "bf16")
    onnx.checker.check_model(bf, full_check=True)
    t = tensor_types(bf)
    computes = compute_types(bf)
    assert t["input"] == FP32 and t["output"] == FP32 and t["w1"] == BF16
    assert computes["conv1"] == BF16 and not any(v == FP16 for v in t.values())
    assert {computes[n] for n in ("mean", "sub", "pow", "var", "add_eps", "sqrt", "qk", "softmax")} == {FP32}
    assert {p.key: p.value for p in bf.metadata_props}["precision"] == "bf16"
    assert set(plan.islands["norm"]) >= {"mean", "pow", "var", "sqrt", "sub"}
    assert "qk" in plan.islands["softmax"]


@pytest.mark.slow
def test_fp32_is_unchanged_and_bad_flags_are_one_line(x2_fp32_32, tmp_path):
    same, plan = convert_precision(x2_fp32_32, "fp32")
    assert same.SerializeToString() == x2_fp32_32.SerializeToString() and plan.islands == {}
    from hrx.errors import HRXError

    with pytest.raises(HRXError, match="--precision must be one of"):
        convert_precision(x2_fp32_32, "fp8")
    with pytest.raises(HRXError, match="--io fp16 needs --precision"):
        export_onnx("default-x2", tmp_path / "x.onnx", tile=32, io="fp16")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_plugin_nodes_get_their_plugin_types_and_still_run(tmp_path):
    """`--ops plugin --precision fp16`: hrx::SelectiveScan takes half x/B/C and FP32 dt/A/D and
    writes half; hrx::MoETop1 takes FP32 logits and half experts; ONNX Runtime (local functions)
    and the per-op half reference both match the FP32 PyTorch model."""
    import onnxruntime as ort

    from conftest import randomize_params

    model = hrx.create_model("hrx-t", scale=2).eval()
    randomize_params(model)
    tile = model.size_multiple
    path = tmp_path / "t.fp16.onnx"
    export_onnx(model, path, tile=tile, ops="plugin", precision="fp16")
    proto = onnx.load(str(path))
    types = tensor_types(proto)
    want_types = {"SelectiveScan": [FP16, FP32, FP32, FP16, FP16, FP32], "MoETop1": [FP32, FP16]}
    seen = set()
    for n in proto.graph.node:
        if n.domain == "hrx":
            seen.add(n.op_type)
            assert [types[i] for i in n.input] == want_types[n.op_type], n.name
            assert types[n.output[0]] == FP16
    assert seen == {"SelectiveScan", "MoETop1"}
    x = photo_tiles(tile, 1)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    bicubic = F.interpolate(torch.from_numpy(x), scale_factor=2, mode="bicubic", align_corners=False).numpy()
    a = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    b = HalfReference(path).run({"input": x})[0].astype(np.float32)
    floor = _metrics(want, bicubic)[2]
    for got in (a, b):
        psnr = _metrics(want, got)[2]
        assert psnr >= 45.0 and psnr > floor + 10, (psnr, floor)


@pytest.mark.slow
def test_upscale_runs_an_fp16_onnx_unchanged_for_the_tiler(half_files, tmp_path):
    """`hrx upscale --engine m.fp16.onnx`: FP32 I/O, so the tiler sees no difference; the image
    matches the same tiling run with the FP32 PyTorch model (ONNX Runtime computes the half graph)."""
    from PIL import Image
    from typer.testing import CliRunner

    from hrx.cli.main import app

    engine, ckpt, tile = half_files["fp16"], half_files["checkpoint"], half_files["tile"]
    assert tile == 2 * hrx.load_model(ckpt).size_multiple
    img = (photo_tiles(48, 1)[0].transpose(1, 2, 0) * 255).round().astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "in.png")
    outs = {}
    for name, how in (("torch", ["--model", str(ckpt), "--tile", str(tile)]), ("fp16", ["--engine", str(engine)])):
        res = CliRunner().invoke(app, ["upscale", str(tmp_path / "in.png"), "-o", str(tmp_path / name), *how])
        assert res.exit_code == 0, res.output
        outs[name] = np.asarray(Image.open(tmp_path / name / "in.png"), dtype=np.float32) / 255
    assert outs["torch"].shape == outs["fp16"].shape == (96, 96, 3)
    assert _metrics(outs["torch"], outs["fp16"])[2] > 45


def test_a_model_that_misbehaves_in_fp16_is_refused_before_tracing(tmp_path):
    """Third-party architectures declare fp16=False when they are known to overflow in half
    (spandrel's dtype support); `--precision fp16` refuses them in one line, nothing written."""
    from hrx.errors import HRXError

    model = hrx.create_model("hrx-t", scale=2).eval()
    model.fp16 = False  # what a third-party wrapper declares
    with pytest.raises(HRXError, match=r"misbehave in fp16.*--precision fp32 or bf16"):
        export_onnx(model, tmp_path / "x.onnx", tile=model.size_multiple, precision="fp16")
    assert not (tmp_path / "x.onnx").exists()


@pytest.fixture(scope="module")
def half_files(hrx_t_x2, tmp_path_factory):
    """The session's perturbed hrx-t x2 exported in FP16 and BF16 at opset 22, tile 32 (two tiles' worth of
    size_multiple, so the tiler has room for its overlap), with its FP32 PyTorch output on a tile: ``{"fp16": path,
    "bf16": path, "checkpoint": path, "tile": 32, "x": tile, "want": output}``."""
    model = hrx.load_model(hrx_t_x2).eval()
    tile = 2 * model.size_multiple
    folder = tmp_path_factory.mktemp("half")
    out = {"checkpoint": hrx_t_x2, "tile": tile}
    for precision in ("fp16", "bf16"):
        out[precision] = folder / f"t.{precision}.onnx"
        export_onnx(hrx_t_x2, out[precision], tile=tile, opset=22, precision=precision)
    out["x"] = photo_tiles(tile, 1)
    with torch.no_grad():
        out["want"] = model(torch.from_numpy(out["x"])).numpy()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("flags", ["", "avx512f avx512_bf16"])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_fp16_and_bf16_exports_run_through_auto_as_written(half_files, precision, flags, monkeypatch):
    """`--precision auto` with a file exported in FP16 / BF16, on a CPU without BF16 and on one with it:
    OpenVINO opens it with the compute the policy chose (fp32: the file runs as written), never refuses
    the auto the user asked for, and its BF16 weights are read as written (finite, close to PyTorch)."""
    from hrx.runtime import precision_policy
    from hrx.runtime.factory import BackendRequest, open_backend, resolve_request

    pytest.importorskip("openvino")
    monkeypatch.setattr(precision_policy, "cpu_flags", lambda cpuinfo=None: frozenset(flags.split()))
    x, want = half_files["x"], half_files["want"]
    request = BackendRequest(engine=half_files[precision], backend="openvino")
    resolved, choice = resolve_request(request)
    assert (choice.precision, choice.compute, resolved.precision) == (precision, "fp32", "fp32")
    with open_backend(request) as backend:
        assert backend.name == "openvino" and backend.precision == "fp32"
        got = backend.infer(x)
    assert np.isfinite(got).all()
    assert _metrics(want, got)[2] > (40.0 if precision == "bf16" else 50.0)
