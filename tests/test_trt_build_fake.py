"""``build_engine``'s orchestration against a stand-in ``tensorrt`` module (no TensorRT here).

The stand-in mimics the TensorRT 10 Python calls the builder makes (Builder, OnnxParser, network
layers, IBuilderConfig, Runtime, engine inspector) and records them, so these tests check what
is parsed (plugin functions dropped, or inlined with --no-plugins), which flags and layer
precisions are set, what is written, and that failures leave no file behind. They say nothing
about TensorRT's own behaviour: that needs TensorRT and a GPU.
"""
from __future__ import annotations

import enum
import importlib.machinery
import json
import sys
import types

import onnx
import pytest
from onnx import TensorProto, helper

from hrx.errors import HRXError
from hrx.runtime.trt import cache, env, plugins
from hrx.runtime.trt.env import GpuInfo

GPU = GpuInfo("NVIDIA L4", "8.9")

LayerType = enum.Enum("LayerType", "CONVOLUTION SOFTMAX REDUCE UNARY ELEMENTWISE PLUGIN_V3 ACTIVATION SHUFFLE "
                                   "CONSTANT MATRIX_MULTIPLY CUMULATIVE")
UnaryOperation = enum.Enum("UnaryOperation", "EXP SQRT RECIP")
ElementWiseOperation = enum.Enum("ElementWiseOperation", "SUM PROD POW SUB")
_KINDS = {"Conv": (LayerType.CONVOLUTION, None), "Softmax": (LayerType.SOFTMAX, None),
          "ReduceMean": (LayerType.REDUCE, None), "Exp": (LayerType.UNARY, UnaryOperation.EXP),
          "Sqrt": (LayerType.UNARY, UnaryOperation.SQRT), "Add": (LayerType.ELEMENTWISE, ElementWiseOperation.SUM),
          "Mul": (LayerType.ELEMENTWISE, ElementWiseOperation.PROD), "Relu": (LayerType.ACTIVATION, None),
          "MatMul": (LayerType.MATRIX_MULTIPLY, None), "CumSum": (LayerType.CUMULATIVE, None)}


class FakeTensor:
    def __init__(self, name, shape=(), dtype="float32"):
        self.name, self.shape, self.dtype = name, tuple(shape), dtype


class FakeLayer:
    def __init__(self, name, type_, op, inputs, outputs):
        self.name, self.type, self._op = name, type_, op
        self._inputs, self._outputs = inputs, outputs
        self.precision = None
        self.output_types = {}

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, i):
        return self._inputs[i]

    def get_output(self, i):
        return self._outputs[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


class IUnaryLayer(FakeLayer):
    op = property(lambda self: self._op)


class IElementWiseLayer(FakeLayer):
    op = property(lambda self: self._op)


class FakeNetwork:
    def __init__(self, flags):
        self.flags, self.layers, self.inputs, self.outputs = flags, [], [], []

    num_layers = property(lambda self: len(self.layers))
    num_inputs = property(lambda self: len(self.inputs))
    num_outputs = property(lambda self: len(self.outputs))

    def get_layer(self, i):
        return self.layers[i]

    def get_input(self, i):
        return self.inputs[i]

    def get_output(self, i):
        return self.outputs[i]


def make_fake_trt(state: dict, version="10.7.0", with_fp16=True, with_aot=True):
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    trt.float32, trt.float16 = "float32", "float16"
    trt.LayerType, trt.IUnaryLayer, trt.IElementWiseLayer = LayerType, IUnaryLayer, IElementWiseLayer
    flags = ["INT8", "OBEY_PRECISION_CONSTRAINTS"] + (["FP16", "BF16"] if with_fp16 else [])
    trt.BuilderFlag = enum.Enum("BuilderFlag", " ".join(flags))
    trt.NetworkDefinitionCreationFlag = enum.IntEnum(
        "NetworkDefinitionCreationFlag", "STRONGLY_TYPED" + (" PREFER_AOT_PYTHON_PLUGINS PREFER_JIT_PYTHON_PLUGINS"
                                                            if with_aot else ""))
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="detailed")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.LayerInformationFormat = types.SimpleNamespace(JSON="json")

    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3

    class ILogger:
        def __init__(self):
            pass

    ILogger.Severity = Severity
    trt.ILogger = ILogger

    class Config:
        def __init__(self):
            self.flags, self.pools, self.cache = set(), {}, None

        def set_flag(self, f):
            self.flags.add(f.name)

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def create_timing_cache(self, data):
            return {"data": data}

        def set_timing_cache(self, c, ignore_mismatch):
            self.cache = c

        def get_timing_cache(self):
            return types.SimpleNamespace(serialize=lambda: b"TIMINGS")

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            state["network"] = FakeNetwork(flags)
            return state["network"]

        def create_builder_config(self):
            state["config"] = Config()
            return state["config"]

        def build_serialized_network(self, network, config):
            if state.get("fail_build"):
                self.logger.log(Severity.ERROR, "out of memory while building")
                return None
            return b"ENGINE"

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0

        def parse(self, data, path):
            model = onnx.load_from_string(data)
            state["parsed"] = model
            if state.get("fail_parse"):
                self.num_errors = 1
                return False
            tensors = {}
            for vi in model.graph.input:
                t = FakeTensor(vi.name, [d.dim_value for d in vi.type.tensor_type.shape.dim])
                self.network.inputs.append(t)
                tensors[vi.name] = t
            for node in model.graph.node:
                type_, op = _KINDS.get(node.op_type, (LayerType.PLUGIN_V3, None))
                outs = [FakeTensor(o) for o in node.output]
                tensors.update({o.name: o for o in outs})
                self.network.layers.append(FakeLayer(node.name, type_, op, [tensors.get(i) for i in node.input], outs))
            for vi in model.graph.output:
                t = tensors[vi.name]
                t.shape = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
                self.network.outputs.append(t)
            return True

        def get_error(self, i):
            return types.SimpleNamespace(desc=lambda: "Assertion failed: creator && \"Plugin not found\"",
                                         node_name=lambda: "scan0", node_operator=lambda: "SelectiveScan")

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            info = {"Layers": [{"LayerType": "x", "Outputs": [{"Format/Datatype": "Row major linear FP16"}]},
                               {"LayerType": "y", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]}]}
            inspector = types.SimpleNamespace(get_engine_information=lambda fmt: json.dumps(info))
            return types.SimpleNamespace(create_engine_inspector=lambda: inspector)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


def _plugin_model() -> onnx.ModelProto:
    """input -> Conv-free toy graph: ReduceMean, Exp, Add, Softmax, hrx::SelectiveScan, hrx::MoETop1, Relu."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 16, 16])
    hrx_attrs = {"plugin_version": "1", "plugin_namespace": "hrx"}
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], name="node_mean"),
        helper.make_node("Exp", ["m"], ["e"], name="node_exp"),
        helper.make_node("Add", ["e", "input"], ["a"], name="node_add"),
        helper.make_node("Softmax", ["a"], ["s"], name="node_softmax"),
        helper.make_node("SelectiveScan", ["s", "s", "s", "s", "s", "s"], ["k"], name="scan0", domain="hrx", chunk=16,
                         **hrx_attrs),
        helper.make_node("MoETop1", ["s", "k"], ["t"], name="moe0", domain="hrx", **hrx_attrs),
        helper.make_node("Relu", ["t"], ["output"], name="node_relu"),
    ]
    functions = [
        helper.make_function("hrx", "SelectiveScan", list("abcdef"), ["y"],
                             [helper.make_node("CumSum", ["a", "b"], ["y"])], [helper.make_opsetid("", 18)],
                             attributes=["chunk"]),
        helper.make_function("hrx", "MoETop1", ["l", "e"], ["y"], [helper.make_node("Mul", ["l", "e"], ["y"])],
                             [helper.make_opsetid("", 18)]),
    ]
    info = {"arch": "toy", "scale": "2", "in_channels": "3", "out_channels": "3", "tile": "8", "batch": "1",
            "size_multiple": "8", "tile_overlap": "2", "ops": "plugin"}
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), functions=functions,
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("hrx", 1)])
    helper.set_model_props(model, info)
    return model


@pytest.fixture
def fake(monkeypatch, tmp_path):
    state: dict = {"registered": 0}

    def install(**kw):
        trt = make_fake_trt(state, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(env, "gpu_info", lambda: GPU)
        monkeypatch.setattr(env, "triton_problem", lambda: None)
        monkeypatch.setattr(plugins, "register_plugins", lambda: state.__setitem__("registered", 1))
        return state

    install()
    path = tmp_path / "toy.onnx"
    onnx.save(_plugin_model(), path)
    state["onnx"] = path
    state["install"] = install
    return state


def test_fp16_plugin_build_writes_engine_record_and_timing_cache(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    engine = tmp_path / "toy.engine"
    report = build_engine(fake["onnx"], engine, fp16=True, workspace_gb=1.5, timing_cache=tmp_path / "t.cache")
    assert engine.read_bytes() == b"ENGINE"
    assert (tmp_path / "t.cache").read_bytes() == b"TIMINGS"
    assert fake["registered"] == 1, "plugins registered before parsing"
    parsed = fake["parsed"]
    assert [f.name for f in parsed.functions] == [], "the parser must not see the hrx local functions"
    assert {n.op_type for n in parsed.graph.node if n.domain == "hrx"} == {"SelectiveScan", "MoETop1"}
    network, config = fake["network"], fake["config"]
    assert network.flags == 1 << 3  # PREFER_JIT_PYTHON_PLUGINS (stand-in value)
    assert {"FP16", "OBEY_PRECISION_CONSTRAINTS"} <= config.flags and "INT8" not in config.flags
    assert config.pools == {"workspace": int(1.5 * (1 << 30))}
    pinned = {layer.name for layer in network.layers if layer.precision == "float32"}
    assert pinned == {"node_mean", "node_exp", "node_add", "node_softmax"}
    assert all(layer.output_types == {0: "float32"} for layer in network.layers if layer.name in pinned)

    record = cache.read_record(engine)
    assert record == report.record
    assert record.precision == "fp16" and record.tensorrt_version == "10.7.0"
    assert (record.gpu_name, record.compute_capability) == (GPU.name, GPU.compute_capability)
    assert record.input_shape == [1, 3, 8, 8] and record.output_shape == [1, 3, 16, 16]
    assert record.plugins == ["hrx::MoETop1", "hrx::SelectiveScan"] and record.plugin_impl == "jit"
    assert record.onnx_sha256 == cache.file_sha256(fake["onnx"])
    assert record.info().arch == "toy"
    assert sorted(record.fp32_layers) == sorted(pinned)
    assert report.precision_counts == {"FP16": 1, "FP32": 1}
    text = "\n".join(report.summary_lines())
    assert "pinned to FP32" in text and "hrx::SelectiveScan" in text


def test_no_plugins_builds_the_inlined_decomposition(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    report = build_engine(fake["onnx"], tmp_path / "d.engine", plugins=False)
    parsed = fake["parsed"]
    assert fake["registered"] == 0
    assert not any(n.domain == "hrx" for n in parsed.graph.node) and len(parsed.functions) == 0
    assert {"CumSum", "Mul"} <= {n.op_type for n in parsed.graph.node}
    assert report.record.plugins == [] and report.record.precision == "fp32"
    assert fake["config"].flags == set()  # FP32: no precision flags, no pinning
    assert any("decomposition" in n for n in report.notes)


def test_aot_sets_the_aot_preference(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    build_engine(fake["onnx"], tmp_path / "a.engine", plugin_impl="aot")
    assert fake["network"].flags == 1 << 2  # PREFER_AOT_PYTHON_PLUGINS (stand-in value)
    assert cache.read_record(tmp_path / "a.engine").plugin_impl == "aot"


def test_failed_build_leaves_nothing(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    fake["fail_build"] = True
    before = sorted(tmp_path.iterdir())
    with pytest.raises(HRXError, match="out of memory while building"):
        build_engine(fake["onnx"], tmp_path / "x.engine", fp16=True, timing_cache=tmp_path / "t.cache")
    assert sorted(tmp_path.iterdir()) == before


def test_parse_error_names_the_node(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    fake["fail_parse"] = True
    with pytest.raises(HRXError, match=r"Plugin not found.*node 'scan0', SelectiveScan"):
        build_engine(fake["onnx"], tmp_path / "x.engine")
    assert not (tmp_path / "x.engine").exists()


def test_aot_needs_tensorrt_10_9(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    fake["install"](version="10.7.0", with_aot=False)
    with pytest.raises(HRXError, match="needs TensorRT >= 10.9"):
        build_engine(fake["onnx"], tmp_path / "x.engine", plugin_impl="aot")


def test_tensorrt_without_weak_typing_refuses_fp16_clearly(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    fake["install"](version="11.0.0", with_fp16=False)
    with pytest.raises(HRXError, match=r"removed weak typing.*tensorrt>=10.7,<11"):
        build_engine(fake["onnx"], tmp_path / "x.engine", fp16=True)
    assert not (tmp_path / "x.engine").exists()


def test_broken_plugin_contract_is_refused_before_tensorrt(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    model = onnx.load(str(fake["onnx"]))
    for a in model.graph.node[4].attribute:
        if a.name == "plugin_namespace":
            a.s = b"wrong"
    bad = tmp_path / "bad.onnx"
    onnx.save(model, bad)
    with pytest.raises(HRXError, match="plugin_namespace is 'wrong'"):
        build_engine(bad, tmp_path / "x.engine")
