"""``build_engine`` against stand-in ``tensorrt`` modules shaped like TensorRT 10.12 and 11.x.

TensorRT cannot be installed here. The stand-ins mimic the Python calls the builder makes
(Builder, OnnxParser, IBuilderConfig, Runtime, engine inspector) and record them:

* 10.12-style: the weakly typed API still exists (``BuilderFlag.FP16/INT8/BF16``, precision
  constraints, ``ILayer.precision``, ``set_output_type``), and every use of it is recorded;
* 11-style: those flags and attributes are absent, and touching them raises, as in TensorRT 11;
  the engine inspector writes TensorRT 11's JSON (``DataType`` beside ``Format``).

The tests check that one strongly typed path builds on both (the precision lives in the parsed
graph), what is parsed (plugin functions dropped or inlined; FP16 conversion with FP32 islands
for ``--fp16``), what is written, and that failures, including an engine that cannot be
deserialized, leave no file. They say nothing about TensorRT's own behaviour: that needs a GPU.
"""
from __future__ import annotations

import enum
import importlib.machinery
import json
import sys
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hrx.errors import HRXError
from hrx.runtime.trt import cache, env, plugins
from hrx.runtime.trt.env import GpuInfo
from tests.graphs import norm_softmax_graph

GPU = GpuInfo("NVIDIA L4", "8.9")
WEAK_FLAGS = ("FP16", "BF16", "INT8", "FP8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS")


class FakeTensor:
    def __init__(self, name, shape=()):
        self.name, self.shape = name, tuple(shape)


class Layer10:
    """A TensorRT 10 layer: ``precision`` and ``set_output_type`` exist; uses are recorded."""

    def __init__(self, name, state):
        self.name, self._state = name, state

    @property
    def precision(self):
        return "float32"

    @precision.setter
    def precision(self, value):
        self._state["weak_calls"].append(f"{self.name}.precision")

    def set_output_type(self, i, dtype):
        self._state["weak_calls"].append(f"{self.name}.set_output_type")


class Layer11:
    """A TensorRT 11 layer: no ``precision``, no ``set_output_type``."""

    __slots__ = ("name",)

    def __init__(self, name, state):
        self.name = name


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


def _inspector_json(style: str) -> str:
    if style == "11":
        return json.dumps({"I/O Tensors": [{"Name": "input", "IOMode": "Input", "DataType": "Float"}], "Layers": [
            {"LayerType": "CaskConvolution", "Outputs": [{"Name": "a", "Format": "kHWC8", "DataType": "Half"}]},
            {"LayerType": "CaskSoftMax", "Outputs": [{"Name": "b", "Format": "kLINEAR", "DataType": "Float"}]}]})
    return json.dumps({"Bindings": ["input", "output"], "Layers": [
        {"LayerType": "x", "Outputs": [{"Format/Datatype": "Row major linear FP16"}]},
        {"LayerType": "y", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]}]})


def make_fake_trt(state: dict, style: str = "10", version: str | None = None):
    """A ``tensorrt`` stand-in: ``style`` "10" (10.12: weak typing present, recorded) or "11"
    (removed flags and attributes absent)."""
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version or ("10.12.0" if style == "10" else "11.4.0")
    trt.float32, trt.float16 = "float32", "float16"
    base_flags = ["TF32", "REFIT", "STRIP_PLAN"]
    trt.BuilderFlag = enum.Enum("BuilderFlag", " ".join(base_flags + (list(WEAK_FLAGS) if style == "10" else [])))
    creation = ["PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"]
    if style == "10":
        creation = ["EXPLICIT_BATCH", "STRONGLY_TYPED"] + creation
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", " ".join(creation), start=0)
    trt.ProfilingVerbosity = types.SimpleNamespace(DETAILED="detailed")
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.LayerInformationFormat = types.SimpleNamespace(JSON="json")
    layer_cls = Layer10 if style == "10" else Layer11

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
                tensors.update({o: FakeTensor(o) for o in node.output})
                self.network.layers.append(layer_cls(node.name, state))
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
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            state["deserialized"] = bytes(data)
            if state.get("fail_deserialize"):
                self.logger.log(Severity.ERROR, "plugin creator hrx::SelectiveScan not found at deserialization")
                return None
            inspector = types.SimpleNamespace(get_engine_information=lambda fmt: _inspector_json(style))
            return types.SimpleNamespace(create_engine_inspector=lambda: inspector)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt


def _plugin_model() -> onnx.ModelProto:
    """A toy plugin graph: ReduceMean, Exp, Add, Softmax, hrx::SelectiveScan, hrx::MoETop1, Relu."""
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
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), functions=functions,
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("hrx", 1)])
    helper.set_model_props(model, _INFO)
    return model


_INFO = {"arch": "toy", "scale": "2", "in_channels": "3", "out_channels": "3", "tile": "8", "batch": "1",
         "size_multiple": "8", "tile_overlap": "2", "ops": "native"}


def _native_model() -> onnx.ModelProto:
    """input -> Conv -> norm statistics -> MatMul logits -> Softmax -> Conv -> output (opset 18)."""
    model = norm_softmax_graph(18, side=8, tail_conv=True)
    helper.set_model_props(model, dict(_INFO, in_channels="4", out_channels="4"))
    return model


@pytest.fixture(params=["10", "11"])
def fake(request, monkeypatch, tmp_path):
    state: dict = {"registered": 0, "weak_calls": [], "style": request.param}

    def install(**kw):
        trt = make_fake_trt(state, **kw)
        monkeypatch.setitem(sys.modules, "tensorrt", trt)
        monkeypatch.setattr(env, "gpu_info", lambda: GPU)
        monkeypatch.setattr(env, "triton_problem", lambda: None)
        monkeypatch.setattr(plugins, "register_plugins", lambda: state.__setitem__("registered", 1))
        state["trt"] = trt
        return state

    install(style=request.param)
    state["onnx"] = tmp_path / "toy.onnx"
    onnx.save(_plugin_model(), state["onnx"])
    state["native"] = tmp_path / "native.onnx"
    onnx.save(_native_model(), state["native"])
    state["install"] = install
    return state


def _strong_flags(state) -> int:
    creation = state["trt"].NetworkDefinitionCreationFlag
    strong = getattr(creation, "STRONGLY_TYPED", None)
    return 0 if strong is None else 1 << int(strong)


def _no_weak_typing(state) -> None:
    assert state["config"].flags == set(), "no builder flag at all (no FP16/INT8/BF16, no precision constraints)"
    assert state["weak_calls"] == [], "no ILayer.precision / set_output_type"


def test_the_stand_ins_have_the_shapes_of_their_versions(fake):
    trt = fake["trt"]
    if fake["style"] == "11":
        for name in WEAK_FLAGS:
            with pytest.raises(AttributeError):
                getattr(trt.BuilderFlag, name)
        layer = Layer11("x", fake)
        with pytest.raises(AttributeError):
            layer.precision = trt.float32
        with pytest.raises(AttributeError):
            layer.set_output_type(0, trt.float32)
        assert not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    else:
        assert all(hasattr(trt.BuilderFlag, n) for n in WEAK_FLAGS)
        assert hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def test_fp16_converts_the_graph_then_builds_strongly_typed(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    engine = tmp_path / "n.engine"
    report = build_engine(fake["native"], engine, fp16=True, workspace_gb=1.5, timing_cache=tmp_path / "t.cache")
    _no_weak_typing(fake)
    parsed = fake["parsed"]
    types = {t.name: t.data_type for t in parsed.graph.initializer}
    assert types["w1"] == TensorProto.FLOAT16 and types["w2"] == TensorProto.FLOAT16
    assert "Cast" in {n.op_type for n in parsed.graph.node}
    assert {p.key: p.value for p in parsed.metadata_props}["precision"] == "fp16"
    assert fake["network"].flags == _strong_flags(fake)
    assert fake["config"].pools == {"workspace": int(1.5 * (1 << 30))}
    assert engine.read_bytes() == b"ENGINE" and fake["deserialized"] == b"ENGINE"
    assert (tmp_path / "t.cache").read_bytes() == b"TIMINGS"
    record = cache.read_record(engine)
    assert record == report.record and record.precision == "fp16"
    assert record.tensorrt_version == fake["trt"].__version__
    assert record.fp32_islands["norm"] >= 4 and record.fp32_islands["softmax"] >= 2
    assert report.precision_counts == {"FP16": 1, "FP32": 1}, "10.x and 11.x inspector JSON"
    assert onnx.load(str(fake["native"])).graph.initializer[0].data_type == TensorProto.FLOAT, "input untouched"


def test_fp32_and_half_exports_build_as_they_are(fake, tmp_path):
    from hrx.export.precision import convert_precision
    from hrx.runtime.trt.builder import build_engine

    report = build_engine(fake["native"], tmp_path / "a.engine")
    assert report.record.precision == "fp32"
    assert fake["parsed"].SerializeToString() == onnx.load(str(fake["native"])).SerializeToString()
    half, _ = convert_precision(onnx.load(str(fake["native"])), "fp16")
    onnx.save(half, tmp_path / "half.onnx")
    report = build_engine(tmp_path / "half.onnx", tmp_path / "b.engine")
    assert report.record.precision == "fp16"
    assert fake["parsed"].SerializeToString() == half.SerializeToString(), "an FP16 export is parsed unchanged"
    _no_weak_typing(fake)


def test_plugin_build_registers_plugins_and_drops_their_functions(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    engine = tmp_path / "toy.engine"
    report = build_engine(fake["onnx"], engine)
    assert fake["registered"] == 1, "plugins registered before parsing"
    parsed = fake["parsed"]
    assert [f.name for f in parsed.functions] == [], "the parser must not see the hrx local functions"
    assert {n.op_type for n in parsed.graph.node if n.domain == "hrx"} == {"SelectiveScan", "MoETop1"}
    jit = fake["trt"].NetworkDefinitionCreationFlag.PREFER_JIT_PYTHON_PLUGINS
    assert fake["network"].flags == _strong_flags(fake) | (1 << int(jit))
    record = cache.read_record(engine)
    assert record.plugins == ["hrx::MoETop1", "hrx::SelectiveScan"] and record.plugin_impl == "jit"
    assert record.input_shape == [1, 3, 8, 8] and record.output_shape == [1, 3, 16, 16]
    assert record.onnx_sha256 == cache.file_sha256(fake["onnx"]) and record.info().arch == "toy"
    assert "hrx::SelectiveScan" in "\n".join(report.summary_lines())
    _no_weak_typing(fake)


def test_no_plugins_builds_the_inlined_decomposition(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    report = build_engine(fake["onnx"], tmp_path / "d.engine", plugins=False)
    parsed = fake["parsed"]
    assert fake["registered"] == 0
    assert not any(n.domain == "hrx" for n in parsed.graph.node) and len(parsed.functions) == 0
    assert {"CumSum", "Mul"} <= {n.op_type for n in parsed.graph.node}
    assert report.record.plugins == [] and report.record.precision == "fp32"
    assert any("decomposition" in n for n in report.notes)


def test_aot_sets_the_aot_preference(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    build_engine(fake["onnx"], tmp_path / "a.engine", plugin_impl="aot")
    aot = fake["trt"].NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS
    assert fake["network"].flags == _strong_flags(fake) | (1 << int(aot))
    assert cache.read_record(tmp_path / "a.engine").plugin_impl == "aot"


def test_qdq_model_builds_as_it_is(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    model = _native_model()
    scale = numpy_helper.from_array(np.array(0.05, np.float32), "scale")
    zero = numpy_helper.from_array(np.array(0, np.int8), "zero")
    model.graph.initializer.extend([scale, zero])
    q = helper.make_node("QuantizeLinear", ["input", "scale", "zero"], ["q"], name="q")
    dq = helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"], name="dq")
    model.graph.node[0].input[0] = "dq"
    model.graph.node.insert(0, dq)
    model.graph.node.insert(0, q)
    path = tmp_path / "qdq.onnx"
    onnx.save(model, path)
    report = build_engine(path, tmp_path / "q.engine", int8=True)
    assert report.record.precision == "int8"
    assert fake["parsed"].SerializeToString() == model.SerializeToString()
    _no_weak_typing(fake)


def test_an_engine_that_cannot_be_deserialized_fails_the_build(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    fake["fail_deserialize"] = True
    before = sorted(tmp_path.iterdir())
    with pytest.raises(HRXError, match="cannot load the engine it made: plugin creator"):
        build_engine(fake["native"], tmp_path / "x.engine", timing_cache=tmp_path / "t.cache")
    assert sorted(tmp_path.iterdir()) == before


def test_failed_build_leaves_nothing(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    fake["fail_build"] = True
    before = sorted(tmp_path.iterdir())
    with pytest.raises(HRXError, match="out of memory while building"):
        build_engine(fake["native"], tmp_path / "x.engine", fp16=True, timing_cache=tmp_path / "t.cache")
    assert sorted(tmp_path.iterdir()) == before


def test_parse_error_names_the_node(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    fake["fail_parse"] = True
    with pytest.raises(HRXError, match=r"Plugin not found.*node 'scan0', SelectiveScan"):
        build_engine(fake["onnx"], tmp_path / "x.engine")
    assert not (tmp_path / "x.engine").exists()


def test_tensorrt_before_10_12_is_refused(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    fake["install"](style="10", version="10.7.0")
    with pytest.raises(HRXError, match=r"needs TensorRT >= 10.12"):
        build_engine(fake["native"], tmp_path / "x.engine", fp16=True)
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


def test_no_weakly_typed_api_in_the_code():
    """No BuilderFlag.FP16/INT8/BF16, precision constraints, ILayer.precision or set_output_type."""
    import pathlib

    import hrx.runtime.trt as pkg

    root = pathlib.Path(pkg.__file__).parent
    text = "\n".join(p.read_text() for p in root.glob("*.py"))
    for word in ("BuilderFlag.FP16", "BuilderFlag.INT8", "BuilderFlag.BF16", "OBEY_PRECISION_CONSTRAINTS",
                 "PREFER_PRECISION_CONSTRAINTS", ".set_output_type(", ".precision = trt"):
        assert word not in text, word


def test_fp16_is_refused_for_a_model_that_declares_it_misbehaves(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine

    model = _native_model()
    helper.set_model_props(model, dict(_INFO, in_channels="4", out_channels="4", fp16="False"))
    path = tmp_path / "third.onnx"
    onnx.save(model, path)
    with pytest.raises(HRXError, match="declares fp16=False"):
        build_engine(path, tmp_path / "x.engine", fp16=True)
    assert not (tmp_path / "x.engine").exists()
    assert build_engine(path, tmp_path / "y.engine").record.precision == "fp32"


def test_engine_and_record_are_a_checked_pair_and_a_failed_build_keeps_the_old_one(fake, tmp_path, monkeypatch):
    """The record carries the engine's sha256 and the reader checks it; a build that fails (in TensorRT, or
    while writing) leaves the previous engine and record exactly as they were."""
    import os

    from hrx.runtime.trt.builder import build_engine

    out = tmp_path / "m.engine"
    report = build_engine(fake["native"], out)
    old = (out.read_bytes(), cache.sidecar_path(out).read_bytes())
    assert report.record.engine_sha256 == cache.file_sha256(out)
    here = cache.RuntimeEnv(fake["trt"].__version__, GPU)
    assert cache.check_engine(out, env=here)[0] == report.record
    fake["fail_build"] = True
    with pytest.raises(HRXError):
        build_engine(fake["native"], out, fp16=True)
    fake["fail_build"] = False
    real_replace = os.replace

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError, match="No space"):
        build_engine(fake["native"], out, fp16=True)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (out.read_bytes(), cache.sidecar_path(out).read_bytes()) == old
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("m.")) == ["m.engine", "m.engine.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    out.write_bytes(old[0] + b"another engine")  # an engine beside another engine's record: refused, one line
    with pytest.raises(cache.EngineMismatchError, match=r"m.engine.json describes another engine .*hrx build"):
        cache.check_engine(out, env=here)


def _qdq_model() -> onnx.ModelProto:
    """The native toy graph with a Q/DQ pair on its input (what `hrx calibrate` writes, in small)."""
    model = _native_model()
    model.graph.initializer.extend([numpy_helper.from_array(np.array(0.05, np.float32), "scale"),
                                    numpy_helper.from_array(np.array(0, np.int8), "zero")])
    model.graph.node[0].input[0] = "dq"
    model.graph.node.insert(0, helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"], name="dq"))
    model.graph.node.insert(0, helper.make_node("QuantizeLinear", ["input", "scale", "zero"], ["q"], name="q"))
    return model


def _file_of_kind(kind: str, path) -> None:
    from hrx.export.precision import convert_precision

    if kind == "qdq":
        model = _qdq_model()
    elif kind == "bf16":
        model = norm_softmax_graph(22, side=8, tail_conv=True)
        helper.set_model_props(model, dict(_INFO, in_channels="4", out_channels="4"))
        model, _ = convert_precision(model, "bf16")
    elif kind == "fp16":
        model, _ = convert_precision(_native_model(), "fp16")
    else:
        model = _native_model()
        if kind == "no-fp16":
            helper.set_model_props(model, dict(_INFO, in_channels="4", out_channels="4", fp16="False"))
    onnx.save(model, path)


@pytest.mark.parametrize("kind, requested, want", [
    ("qdq", "auto", "int8"), ("bf16", "auto", "bf16"), ("no-fp16", "auto", "fp32"), ("fp32", "auto", "fp16"),
    ("fp16", "auto", "fp16"), ("fp32", "fp32", "fp32"), ("qdq", "int8", "int8")])
def test_backend_trt_on_an_onnx_builds_the_precision_of_the_file_or_the_one_asked(fake, tmp_path, monkeypatch,
                                                                                  kind, requested, want):
    """`hrx upscale --engine m.onnx --backend trt [--precision P]`: an INT8 Q/DQ file, a BF16 export and a
    model that declares fp16=False open (each in its own precision) instead of being refused as FP16."""
    from hrx.runtime.factory import BackendRequest, open_backend
    from hrx.runtime.trt import backend as trt_backend

    monkeypatch.setenv("HRX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(env, "require_torch_cuda", lambda *a, **k: None)
    opened = []
    monkeypatch.setattr(trt_backend.TensorRTBackend, "__init__",
                        lambda self, engine_path, **kw: opened.append(cache.read_record(engine_path)))
    path = tmp_path / f"{kind}.onnx"
    _file_of_kind(kind, path)
    open_backend(BackendRequest(engine=path, backend="trt", precision=requested))
    assert [r.precision for r in opened] == [want]
    assert f"-{want}-" in next((tmp_path / "cache" / "engines").glob("*.engine")).name  # the cache key says it too
    _no_weak_typing(fake)


@pytest.mark.parametrize("kind, requested, needle", [("fp16", "fp32", "--precision fp32 on a fp16 graph"),
                                                     ("no-fp16", "fp16", "declares fp16=False"),
                                                     ("fp32", "int8", "needs a quantized")])
def test_backend_trt_refuses_a_precision_the_file_cannot_build_in(fake, tmp_path, monkeypatch, kind, requested, needle):
    from hrx.runtime.factory import BackendRequest, open_backend

    monkeypatch.setenv("HRX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(env, "require_torch_cuda", lambda *a, **k: None)
    path = tmp_path / f"{kind}.onnx"
    _file_of_kind(kind, path)
    with pytest.raises(HRXError, match=needle):
        open_backend(BackendRequest(engine=path, backend="trt", precision=requested))
    assert not list((tmp_path / "cache").rglob("*.engine"))
