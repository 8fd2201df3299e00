"""Graph passes (hrx.export.passes): each one alone and all together, ONNX Runtime against the unfused
PyTorch model with perturbed weights (<= 1e-4), plus what each pass must remove from the graph."""
from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import hrx
from conftest import perturbed_hrx_t, randomize_params
from hrx.export.onnx_export import export_onnx
from hrx.export.onnx_tools import Graph, default_target
from hrx.export.passes import (TARGET_PASSES, cancel_transposes, flip_as_gather, fuse_channel_layernorm,
                               gelu_for_ort, layernorm_div, merge_transposes, optimize)

ATOL = 1e-4


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _ops(model: onnx.ModelProto) -> Counter:
    return Counter(n.op_type for n in model.graph.node)


@pytest.fixture(scope="module", params=["hrx-t", "hydra-t"])
def unpassed(request, tmp_path_factory):
    """(unfused model, export without passes, input, unfused output) for a perturbed tiny preset (hrx-t: the
    model of the session's ``hrx_t_x2`` exports)."""
    if request.param == "hrx-t":
        model = perturbed_hrx_t()
    else:
        torch.manual_seed(0)
        model = hrx.create_model(request.param, scale=2).eval()
        randomize_params(model, 0.05)
    tile = 2 * model.size_multiple
    path = tmp_path_factory.mktemp("passes") / f"{request.param}.onnx"
    export_onnx(model, path, tile=tile, graph_passes=False)
    x = np.random.default_rng(1).random((1, model.in_channels, tile, tile), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    return model, onnx.load(str(path)), x, ref


def _layernorms(model: onnx.ModelProto) -> int:
    """Channel LayerNorms as the exporter writes them: a ReduceMean feeding a Sub."""
    producer = {o: n for n in model.graph.node for o in n.output}
    return sum(1 for n in model.graph.node if n.op_type == "Sub" and n.input[1] in producer
               and producer[n.input[1]].op_type == "ReduceMean")


@pytest.mark.slow
def test_layernorm_pass_matches_unfused_model(unpassed):
    _, base, x, ref = unpassed
    before = _layernorms(base)
    assert before > 0
    # the fused window attention writes its LayerNorm channels-last itself (one LayerNormalization)
    native = _ops(base)["LayerNormalization"]
    assert native > 0
    model = copy.deepcopy(base)
    n = fuse_channel_layernorm(model)
    onnx.checker.check_model(model, full_check=True)
    ops = _ops(model)
    assert n == before and _layernorms(model) == 0 and ops["LayerNormalization"] == native + n
    assert ops["ReduceMean"] <= _ops(base)["ReduceMean"] - n  # a channel mean stays only where something else uses it
    assert ops["Pow"] == _ops(base)["Pow"] - n
    # a LayerNorm moved behind a transpose that puts channels last costs no transpose, any other one two
    producer = {o: nd for nd in model.graph.node for o in nd.output}
    sunk = [nd for nd in model.graph.node if nd.op_type == "LayerNormalization" and nd.name.startswith("hrx_layernorm")
            and producer[nd.input[0]].op_type == "Transpose" and not producer[nd.input[0]].name.startswith("hrx_ln")]
    assert ops["Transpose"] == _ops(base)["Transpose"] + 2 * (n - len(sunk))
    err = float(np.abs(_ort(model, x) - ref).max())
    assert err <= ATOL, f"max abs error {err:.2e}"


class _NormPartition(torch.nn.Module):
    """A channel LayerNorm (affine folded away) feeding only a shifted window partition: the pattern
    the pass sinks behind the partition's transpose (the unfused window attention's layout)."""

    def __init__(self, c: int = 8, window: int = 4) -> None:
        super().__init__()
        from hrx.blocks.norm import LayerNorm2d

        self.norm, self.window = LayerNorm2d(c), window
        self.norm.weight = self.norm.bias = None
        self.proj = torch.nn.Linear(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from hrx.blocks.window_attention import window_partition

        y = torch.roll(self.norm(x), shifts=(-2, -2), dims=(2, 3))
        return self.proj(window_partition(y, self.window))


def test_layernorm_pass_sinks_into_window_partition():
    from hrx.export.onnx_export import DEFAULT_OPSET, simplify, trace_to_onnx

    torch.manual_seed(0)
    module = _NormPartition().eval()
    x = torch.randn(1, 8, 16, 16) * 2 + 1
    with torch.no_grad():
        ref = module(x).numpy()
    model, _ = simplify(onnx.shape_inference.infer_shapes(trace_to_onnx(module, x, "native", DEFAULT_OPSET)))
    transposes = _ops(model)["Transpose"]
    assert fuse_channel_layernorm(model) == 1
    onnx.checker.check_model(model, full_check=True)
    producer = {o: nd for nd in model.graph.node for o in nd.output}
    (ln,) = [nd for nd in model.graph.node if nd.op_type == "LayerNormalization"]
    assert producer[ln.input[0]].op_type == "Transpose" and not producer[ln.input[0]].name.startswith("hrx_ln")
    assert _ops(model)["Transpose"] == transposes  # no transpose added
    assert float(np.abs(_ort(model, x.numpy()) - ref).max()) <= ATOL


@pytest.mark.slow
def test_all_passes_match_unfused_model_and_run_by_export(unpassed, request, tmp_path):
    model, base, x, ref = unpassed
    passed = copy.deepcopy(base)
    report = optimize(passed)
    assert report.counts["fuse_channel_layernorm"] > 0
    assert float(np.abs(_ort(passed, x) - ref).max()) <= ATOL
    # hrx export --target onnxruntime runs them and says so (hrx-t: the session's export of this model)
    if model.arch == "hrx-t":
        result = request.getfixturevalue("hrx_t_x2_onnxruntime")
        assert (result.info.tile, result.info.ops, result.info.batch) == (x.shape[-1], "native", 1)
        out = result.path
    else:
        out = tmp_path / "m.onnx"
        result = export_onnx(model, out, tile=x.shape[-1], target="onnxruntime")
    assert "fuse_channel_layernorm" in result.passes
    exported = onnx.load(str(out))
    assert _ops(exported)["LayerNormalization"] == report.counts["fuse_channel_layernorm"] + _ops(base)["LayerNormalization"]
    assert float(np.abs(_ort(exported, x) - ref).max()) <= ATOL


@pytest.mark.slow
def test_simplified_export_leaves_nothing_to_fold(hrx_t_x2_native):
    """Constant folding is the simplifier's alone (no pass repeats it): a default export holds no node
    whose inputs are all constants and no Shape of a static tensor."""
    result = hrx_t_x2_native
    assert result.simplifier.startswith(("onnxsim", "onnxslim")), result.simplifier
    g = Graph(onnx.load(str(result.path)))
    foldable = [n.name for n in g.nodes if n.op_type == "Shape"
                or (n.input and all(g.is_const(i) for i in n.input if i) and n.op_type != "Constant")]
    assert not foldable, foldable[:5]


def _transpose_graph() -> onnx.ModelProto:
    nodes = [helper.make_node("Transpose", ["x"], ["a"], perm=[0, 2, 3, 1]),
             helper.make_node("Transpose", ["a"], ["b"], perm=[0, 2, 1, 3]),
             helper.make_node("Relu", ["b"], ["c"]),
             helper.make_node("Transpose", ["c"], ["d"], perm=[0, 1, 2, 3]),
             helper.make_node("Add", ["d", "k"], ["y"])]
    k = numpy_helper.from_array(np.arange(24, dtype=np.float32).reshape(1, 4, 3, 2), "k")
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3, 2])], [k])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_merge_transposes_composes_and_drops_identity():
    model = _transpose_graph()
    x = np.random.default_rng(3).standard_normal((1, 2, 3, 4)).astype(np.float32)
    ref = _ort(model, x)
    assert merge_transposes(model) == 2
    onnx.checker.check_model(model, full_check=True)
    transposes = [n for n in model.graph.node if n.op_type == "Transpose"]
    assert len(transposes) == 1 and list(transposes[0].attribute[0].ints) == [0, 3, 2, 1]
    np.testing.assert_array_equal(_ort(model, x), ref)
    assert np.array_equal(ref, np.maximum(x.transpose(0, 3, 2, 1), 0) + np.arange(24, dtype=np.float32).reshape(1, 4, 3, 2))


def _relabel_graph(last_perm: list[int]) -> onnx.ModelProto:
    """tokens [1, HW, C] -> [1, C, HW] -> [1, C, H, W] (also used elsewhere) -> Transpose(last_perm)."""
    shape = helper.make_tensor_value_info
    nodes = [helper.make_node("Transpose", ["x"], ["a"], perm=[0, 2, 1]),
             helper.make_node("Reshape", ["a", "s"], ["b"]),
             helper.make_node("Relu", ["b"], ["y2"]),
             helper.make_node("Transpose", ["b"], ["c"], perm=last_perm),
             helper.make_node("Relu", ["c"], ["y"])]
    s = numpy_helper.from_array(np.array([1, 4, 3, 5], dtype=np.int64), "s")
    out = [1] + [[4, 3, 5][p - 1] for p in last_perm[1:]]
    graph = helper.make_graph(nodes, "r", [shape("x", TensorProto.FLOAT, [1, 15, 4])],
                              [shape("y", TensorProto.FLOAT, out), shape("y2", TensorProto.FLOAT, [1, 4, 3, 5])], [s])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_cancel_transposes_reads_a_relabelled_tensor_back_as_a_reshape():
    x = np.random.default_rng(5).standard_normal((1, 15, 4)).astype(np.float32)
    model = _relabel_graph([0, 2, 3, 1])  # [1, C, H, W] -> [1, H, W, C]: the tokens again
    ref = _ort(model, x)
    assert cancel_transposes(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert _ops(model)["Transpose"] == 1  # the first one still feeds y2
    reshape = [n for n in model.graph.node if n.op_type == "Reshape" and n.input[0] == "x"]
    assert len(reshape) == 1
    np.testing.assert_array_equal(_ort(model, x), ref)
    np.testing.assert_array_equal(ref, np.maximum(x.reshape(1, 3, 5, 4), 0))
    other = _relabel_graph([0, 1, 3, 2])  # a real transpose: stays
    assert cancel_transposes(other) == 0 and _ops(other)["Transpose"] == 2


def test_gelu_pass_gives_ort_one_gelu_kernel_with_the_same_values(tmp_path):
    """The exporter's GELU (opset 18) reordered: same values, and ONNX Runtime fuses it into Gelu."""
    import onnxruntime as ort

    module = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 1), torch.nn.GELU()).eval()
    x = torch.randn(1, 4, 8, 8) * 3
    with torch.no_grad():
        ref = module(x).numpy()
    from hrx.export.onnx_export import DEFAULT_OPSET, simplify, trace_to_onnx

    model, _ = simplify(onnx.shape_inference.infer_shapes(trace_to_onnx(module, x, "native", DEFAULT_OPSET)))
    assert _ops(model)["Erf"] == 1
    before = _ort(model, x.numpy())
    assert gelu_for_ort(model) == 1 and gelu_for_ort(model) == 0
    onnx.checker.check_model(model, full_check=True)
    assert float(np.abs(_ort(model, x.numpy()) - ref).max()) <= 1e-5
    assert float(np.abs(_ort(model, x.numpy()) - before).max()) <= 1e-6
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    optimized = _ops(onnx.load(str(tmp_path / "opt.onnx")))
    assert optimized["Gelu"] == 1 and optimized["Erf"] == 0


def test_layernorm_pass_keeps_a_layernorm_with_an_outside_consumer():
    """``x - mean`` also used elsewhere: not a pure LayerNorm, left alone."""
    c = 4
    nodes = [helper.make_node("ReduceMean", ["x", "ax"], ["m"]), helper.make_node("Sub", ["x", "m"], ["s"]),
             helper.make_node("Pow", ["s", "two"], ["p"]), helper.make_node("ReduceMean", ["p", "ax"], ["v"]),
             helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"]),
             helper.make_node("Reciprocal", ["sd"], ["r"]), helper.make_node("Mul", ["s", "r"], ["n"]),
             helper.make_node("Add", ["n", "s"], ["y"])]
    inits = [numpy_helper.from_array(np.array([1]), "ax"), numpy_helper.from_array(np.float32(2), "two"),
             numpy_helper.from_array(np.float32(1e-6), "eps")]
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 3, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert fuse_channel_layernorm(model) == 0
    nodes[-1] = helper.make_node("Add", ["n", "x"], ["y"])  # now a pure LayerNorm
    graph = helper.make_graph(nodes, "ln", list(graph.input), list(graph.output), inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    x = np.random.default_rng(4).standard_normal((1, c, 3, 3)).astype(np.float32) * 3 + 1
    ref = _ort(model, x)
    assert fuse_channel_layernorm(model) == 1
    mu = x.mean(1, keepdims=True)
    expect = (x - mu) / np.sqrt(((x - mu) ** 2).mean(1, keepdims=True) + 1e-6) + x
    np.testing.assert_allclose(_ort(model, x), ref, atol=1e-5)
    np.testing.assert_allclose(_ort(model, x), expect, atol=1e-5)


def _ov(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    return compiled.create_infer_request().infer({0: x})[0]


@pytest.mark.slow
def test_openvino_passes_match_unfused_model(unpassed):
    """The openvino target: channel LayerNorms stay over axis 1 (as a Div, no transposes added), every
    flip (none left in these models) is a Gather; ONNX Runtime and OpenVINO (f32) against the unfused model."""
    module, base, x, ref = unpassed
    before = _ops(base)
    flips = sum(1 for n in base.graph.node if _reverses(n, base))
    assert _layernorms(base) > 0 and flips == 0  # the deploy mixers scan their reversed orders in place

    model = copy.deepcopy(base)
    report = optimize(model, TARGET_PASSES["openvino"])
    ops = _ops(model)
    assert report.counts["layernorm_div"] == _layernorms(base) and report.counts["flip_as_gather"] == flips
    assert _layernorms(model) == _layernorms(base)  # still over the channel axis of NCHW
    assert ops["Reciprocal"] == before["Reciprocal"] - _layernorms(base) and ops["Div"] == before["Div"] + _layernorms(base)
    assert ops["LayerNormalization"] == before["LayerNormalization"] and ops["Transpose"] <= before["Transpose"]
    assert ops["Slice"] == before["Slice"] - flips and ops["Gather"] == before["Gather"] + flips
    for run in (_ort, _ov):
        err = float(np.abs(run(model, x) - ref).max())
        assert err <= ATOL, f"{run.__name__}: max abs error {err:.2e}"


def _ov_layers(model: onnx.ModelProto) -> Counter:
    """Layer types of OpenVINO's compiled CPU graph (f32): ``Reorder`` is a layout conversion it inserted."""
    import openvino as ov

    compiled = ov.Core().compile_model(ov.Core().read_model(model.SerializeToString(), b""), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    return Counter(op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops())


@pytest.mark.slow
def test_ssm_mixer_deploy_graph_moves_less_data(tmp_path):
    """A fused SSMixer alone (an 8 x 6 map, 48 positions: the last chunk padded), exported for openvino: the
    in-place form (SSMixer.fuse) leaves no flip or select Gather and fewer Reorders in OpenVINO's compiled
    graph than the four flipped orders, and matches the unfused mixer on ONNX Runtime and OpenVINO."""
    from hrx.blocks.ssm import SSMixer
    from hrx.export.onnx_export import simplify, trace_to_onnx

    torch.manual_seed(0)
    mixer = SSMixer(16, d_state=4, head_dim=8, chunk=32).eval()
    randomize_params(mixer, 0.1)
    x = torch.rand(1, 16, 8, 6)
    with torch.no_grad():
        ref = mixer(x).numpy()
    graphs = {}
    for in_place in (True, False):
        deploy = copy.deepcopy(mixer)
        deploy.fuse()
        deploy.bidirectional = in_place
        model, _ = simplify(trace_to_onnx(torch.nn.Sequential(deploy), x, "native", 18))
        optimize(model, TARGET_PASSES["openvino"])
        graphs[in_place] = model
    layers, flipped = _ov_layers(graphs[True]), _ov_layers(graphs[False])
    assert layers["Gather"] == 0 and flipped["Gather"] >= 4
    assert layers["Reorder"] < flipped["Reorder"], (layers, flipped)
    for run in (_ort, _ov):
        err = float(np.abs(run(graphs[True], x.numpy()) - ref).max())
        assert err <= ATOL, f"{run.__name__}: max abs error {err:.2e}"


def _reverses(node: onnx.NodeProto, model: onnx.ModelProto) -> bool:
    from hrx.export.passes import _full_reverse_axis

    return _full_reverse_axis(Graph(model), node) is not None


def _slice_graph(starts: list[int], ends: list[int], axes: list[int], steps: list[int]) -> onnx.ModelProto:
    consts = [numpy_helper.from_array(np.array(v, dtype=np.int64), k)
              for k, v in (("st", starts), ("en", ends), ("ax", axes), ("sp", steps))]
    nodes = [helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])]
    out = [2, 3, 5]
    for a, b, e, p in zip(axes, starts, ends, steps):
        out[a] = len(range(*slice(b, e, p).indices(out[a])))
    graph = helper.make_graph(nodes, "s", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_flip_as_gather_takes_whole_reversals_only():
    x = np.random.default_rng(7).standard_normal((2, 3, 5)).astype(np.float32)
    for starts, ends, axes in (([-1], [-(2 ** 63)], [2]), ([4], [-6], [-1]), ([2 ** 62], [-(2 ** 62)], [1])):
        model = _slice_graph(starts, ends, axes, [-1])
        ref = _ort(model, x)
        assert flip_as_gather(model) == 1 and _ops(model) == Counter({"Gather": 1})
        onnx.checker.check_model(model, full_check=True)
        np.testing.assert_array_equal(_ort(model, x), ref)
        np.testing.assert_array_equal(ref, np.flip(x, axes[0]))
    for starts, ends, axes, steps in (([3], [-(2 ** 63)], [2], [-1]),  # starts inside: a part only
                                      ([-1], [0], [2], [-1]),  # stops before the first element
                                      ([-1], [-(2 ** 63)], [2], [-2]),  # every second one
                                      ([0], [5], [2], [1])):
        model = _slice_graph(starts, ends, axes, steps)
        assert flip_as_gather(model) == 0 and _ops(model) == Counter({"Slice": 1})


def test_layernorm_div_leaves_other_products_alone():
    from hrx.blocks.norm import LayerNorm2d
    from hrx.export.onnx_export import DEFAULT_OPSET, simplify, trace_to_onnx

    class NormTimesRsqrt(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = LayerNorm2d(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(x) * torch.rsqrt(x.abs() + 1)  # a Reciprocal that is not a LayerNorm's

    module = NormTimesRsqrt().eval()
    x = torch.randn(1, 8, 6, 6) * 3 + 2
    with torch.no_grad():
        ref = module(x).numpy()
    model, _ = simplify(onnx.shape_inference.infer_shapes(trace_to_onnx(module, x, "native", DEFAULT_OPSET)))
    assert _ops(model)["Reciprocal"] == 2
    assert layernorm_div(model) == 1 and _ops(model)["Reciprocal"] == 1
    onnx.checker.check_model(model, full_check=True)
    assert float(np.abs(_ort(model, x.numpy()) - ref).max()) <= ATOL


@pytest.mark.slow
def test_export_target_picks_the_passes_and_is_recorded(hrx_t_x2, hrx_t_x2_native, hrx_t_x2_onnxruntime, tmp_path):
    model = hrx.load_model(hrx_t_x2).eval()
    x = np.random.default_rng(2).random((1, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    props, ops = {}, {}
    shared = {"onnxruntime": hrx_t_x2_onnxruntime, None: hrx_t_x2_native}  # the session's exports of this model
    for target in ("openvino", "onnxruntime", None):
        result = shared.get(target) or export_onnx(model, tmp_path / f"{target}.onnx", tile=32, target=target)
        proto = onnx.load(str(result.path))
        props[target], ops[target] = {p.key: p.value for p in proto.metadata_props}, _ops(proto)
        assert list(result.passes.split(", "))[0].split()[0] == TARGET_PASSES[target or "openvino"][0]
        assert float(np.abs(_ort(proto, x) - ref).max()) <= ATOL
        # every node names the module it came from (benchmarks/profile_graph.py's blocks)
        scoped = [n for n in proto.graph.node if any(p.key == "hrx_scope" for p in n.metadata_props)]
        assert len(scoped) >= 0.75 * len(proto.graph.node)
    assert props["openvino"]["graph_target"] == "openvino"
    assert props["onnxruntime"]["graph_target"] == "onnxruntime"
    # no --target: an FP32 file of native ops is for OpenVINO, the default CPU engine; plugin ops and half
    # precision files are for ONNX Runtime (and the GPU engines)
    assert props[None]["graph_target"] == "openvino" and ops[None] == ops["openvino"]
    assert ops["openvino"]["Transpose"] < ops["onnxruntime"]["Transpose"]
    assert [default_target(o, p) for o, p in (("native", "fp16"), ("native", "bf16"), ("plugin", "fp32"))] == \
        ["onnxruntime"] * 3
    assert default_target("native", "fp32", dynamic_batch=True) == "onnxruntime"  # servers: Triton's ORT / TRT
    from hrx.errors import HRXError

    with pytest.raises(HRXError, match="--target onnxruntime"):
        export_onnx(model, tmp_path / "p.onnx", tile=32, ops="plugin", target="openvino")
