"""The hrx:: plugin contract and the tensorrt.plugin registrations, checked without TensorRT.

Registration runs against a stand-in ``tensorrt.plugin`` that applies the signature rules of
TensorRT's own validation (``tensorrt/plugin/_validate.py``: register/impl/autotune/aot_impl
schemas) and records the functions, so the plugins' shape and type inference can be called.
"""
from __future__ import annotations

import inspect
import sys
import types
import typing

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from hrx.runtime.trt import plugins

# --- synthetic nodes ----------------------------------------------------------------------------


def _scan_node(**attrs) -> onnx.NodeProto:
    base = {"chunk": 32, "plugin_version": "1", "plugin_namespace": "hrx"}
    base.update(attrs)
    base = {k: v for k, v in base.items() if v is not None}
    return helper.make_node("SelectiveScan", list("abcdef"), ["y"], domain="hrx", name="scan", **base)


def test_a_well_formed_node_has_no_problems():
    assert plugins.node_problems(_scan_node()) == []
    moe = helper.make_node("MoETop1", ["l", "e"], ["y"], domain="hrx", plugin_version="1", plugin_namespace="hrx")
    assert plugins.node_problems(moe) == []


@pytest.mark.parametrize("attrs, words", [
    ({"plugin_version": None}, "plugin_version is missing"),
    ({"plugin_version": 1}, "must be a STRING"),
    ({"plugin_namespace": "other"}, "'other', want 'hrx'"),
    ({"chunk": None}, "chunk is missing"),
    ({"chunk": "32"}, "chunk must be an INT"),
    ({"aot": 1}, "aot overrides"),
])
def test_contract_violations_are_named(attrs, words):
    problems = plugins.node_problems(_scan_node(**attrs))
    assert any(words in p for p in problems), problems


def test_wrong_arity_and_unknown_ops():
    node = helper.make_node("SelectiveScan", ["a"], ["y"], domain="hrx", chunk=8, plugin_version="1",
                            plugin_namespace="hrx")
    assert any("1 inputs, want 6" in p for p in plugins.node_problems(node))
    odd = helper.make_node("Mystery", ["a"], ["y"], domain="hrx")
    assert "no hrx plugin" in plugins.node_problems(odd)[0]


def test_model_level_contract_needs_functions_and_the_domain_import():
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([_scan_node()], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    problems = plugins.contract_problems(model)
    assert any("no ONNX local function" in p for p in problems)
    assert any("opset_import lacks" in p for p in problems)


# --- a stand-in tensorrt.plugin that enforces TensorRT's documented schemas -----------------------

class TensorDesc:
    def __init__(self, shape, dtype="float32"):
        self.shape_expr = list(shape)
        self.dtype = dtype

    @property
    def ndim(self) -> int:
        return len(self.shape_expr)

    def like(self) -> "TensorDesc":
        return TensorDesc(self.shape_expr, self.dtype)


class Tensor:
    pass


class AutoTuneCombination:
    def __init__(self, io_types: str | None = None, layouts: str | None = None, tactics=None):
        self.io_types = io_types


class KernelLaunchParams:
    pass


class SymExprs:
    pass


class SymIntExprs(SymExprs):
    def __init__(self, count: int) -> None:
        self.count = count


def _fake_modules():
    trt = types.ModuleType("tensorrt")
    trt.float32, trt.float16 = "float32", "float16"
    trtp = types.ModuleType("tensorrt.plugin")
    defs: dict[str, dict] = {}
    builtin = (int, float, bytes, bool, str)

    def register(pid):
        def wrap(fn):
            sig = inspect.signature(fn)
            tensors, attrs, seen_attr = [], {}, False
            for name, p in sig.parameters.items():
                assert p.annotation is not inspect.Parameter.empty, f"{name} lacks an annotation"
                assert p.default is inspect.Parameter.empty
                if isinstance(p.annotation, type) and issubclass(p.annotation, TensorDesc):
                    assert not seen_attr, "TensorDescs and attributes interspersed"
                    tensors.append(name)
                else:
                    assert p.annotation in builtin or typing.get_origin(p.annotation) is np.ndarray, \
                        f"attribute {name}: {p.annotation}"  # tensorrt.plugin takes scalars and NumPy arrays
                    assert name not in ("outputs", "stream", "tactic")
                    attrs[name] = p.annotation
                    seen_attr = True
            ret = sig.return_annotation
            n_out = len(typing.get_args(ret)) if typing.get_origin(ret) is tuple else 1
            assert typing.get_origin(ret) is tuple or issubclass(ret, TensorDesc)
            defs[pid] = {"register": fn, "tensors": tensors, "attrs": attrs, "n_out": n_out}
            return fn
        return wrap

    def _check(pid, fn, tail, what):
        d = defs[pid]
        names = list(inspect.signature(fn).parameters)
        used = [a for a in d["attrs"] if a in names]
        assert names == d["tensors"] + used + tail, f"{what} of {pid}: {names}"
        for name, p in inspect.signature(fn).parameters.items():
            if name in d["attrs"] and p.annotation is not inspect.Parameter.empty:
                assert p.annotation == d["attrs"][name]
            if name == "outputs" and p.annotation is not inspect.Parameter.empty:
                assert typing.get_origin(p.annotation) is tuple

    def impl(pid):
        def wrap(fn):
            tail = ["outputs", "stream"] + (["tactic"] if "tactic" in inspect.signature(fn).parameters else [])
            _check(pid, fn, tail, "impl")
            assert inspect.signature(fn).return_annotation in (None, inspect.Parameter.empty)
            defs[pid]["impl"] = fn
            return fn
        return wrap

    def autotune(pid):
        def wrap(fn):
            _check(pid, fn, ["outputs"], "autotune")
            defs[pid]["autotune"] = fn
            return fn
        return wrap

    def aot_impl(pid):
        def wrap(fn):
            _check(pid, fn, ["outputs", "tactic"], "aot_impl")
            ret = inspect.signature(fn).return_annotation
            args = typing.get_args(ret)
            assert typing.get_origin(ret) is tuple and len(args) == 4
            for a in args[:2]:
                assert set(typing.get_args(a)) <= {str, bytes} or a in (str, bytes)
            assert issubclass(args[2], KernelLaunchParams) and issubclass(args[3], SymExprs)
            defs[pid]["aot_impl"] = fn
            return fn
        return wrap

    def from_shape_expr(shape, dtype):
        return TensorDesc(shape, dtype)

    for name, value in dict(register=register, impl=impl, autotune=autotune, aot_impl=aot_impl,
                            from_shape_expr=from_shape_expr, TensorDesc=TensorDesc, Tensor=Tensor,
                            AutoTuneCombination=AutoTuneCombination, KernelLaunchParams=KernelLaunchParams,
                            SymExprs=SymExprs, SymIntExprs=SymIntExprs).items():
        setattr(trtp, name, value)
    trt.plugin = trtp
    return trt, trtp, defs


@pytest.fixture
def registered(monkeypatch):
    trt, trtp, defs = _fake_modules()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    monkeypatch.setattr(plugins, "_registered", {})
    ids = plugins.register_plugins()
    return ids, defs


def test_both_plugins_register_with_valid_schemas(registered):
    ids, defs = registered
    assert ids == ("hrx::SelectiveScan", "hrx::MoETop1")
    for pid in ids:
        assert {"register", "impl", "autotune", "aot_impl"} <= set(defs[pid]), pid
    assert defs["hrx::SelectiveScan"]["tensors"] == list(plugins.SELECTIVE_SCAN.inputs)
    assert defs["hrx::SelectiveScan"]["attrs"] == {"chunk": plugins.IntAttr}  # the parser's INT, as an int32 array
    assert defs["hrx::MoETop1"]["tensors"] == list(plugins.MOE_TOP1.inputs)
    assert defs["hrx::MoETop1"]["attrs"] == {}
    assert plugins.aot_available()
    assert plugins.register_plugins() == ids  # idempotent


def test_shape_and_type_inference(registered):
    _, defs = registered
    x = TensorDesc((4, 4, 8, 64), "float16")  # [b, H, P, L]
    y = defs["hrx::SelectiveScan"]["register"](x, TensorDesc((4, 4, 64)), TensorDesc((4,)), TensorDesc((4, 4, 64)),
                                               TensorDesc((4, 4, 64)), TensorDesc((4,)), 16)
    assert y.shape_expr == [4, 4, 8, 64] and y.dtype == "float16"
    out = defs["hrx::MoETop1"]["register"](TensorDesc((2, 4, 8, 8)), TensorDesc((2, 4, 16, 8, 8), "float16"))
    assert out.shape_expr == [2, 16, 8, 8] and out.dtype == "float16"


def test_autotune_offers_fp32_and_fp16_io(registered):
    _, defs = registered
    for pid, n_io in (("hrx::SelectiveScan", 7), ("hrx::MoETop1", 3)):
        d = defs[pid]
        args = [TensorDesc((1,))] * len(d["tensors"])
        combos = d["autotune"](*args, (TensorDesc((1,)),))
        types_ = [[t.strip() for t in c.io_types.split(",")] for c in combos]
        assert all(len(t) == n_io for t in types_), types_
        assert ["FP32"] * n_io in types_
        assert any("FP16" in t for t in types_)
        for t in types_:
            assert set(t) <= {"FP32", "FP16"}
    scan = [[t.strip() for t in c.io_types.split(",")] for c in
            defs["hrx::SelectiveScan"]["autotune"](*[TensorDesc((1,))] * 6, (TensorDesc((1,)),))]
    assert all(t[1] == t[2] == t[5] == "FP32" for t in scan), "dt, A, D stay FP32"
    moe = [[t.strip() for t in c.io_types.split(",")] for c in
           defs["hrx::MoETop1"]["autotune"](TensorDesc((1,)), TensorDesc((1,)), (TensorDesc((1,)),))]
    assert all(t[0] == "FP32" for t in moe), "the logits (softmax input) stay FP32"


def test_registration_without_tensorrt_is_a_missing_dependency(monkeypatch):
    from hrx.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    monkeypatch.setattr(plugins, "_registered", {})
    with pytest.raises(MissingDependencyError, match=r"pip install 'hrx\[tensorrt\]'"):
        plugins.register_plugins()


def test_strip_keeps_other_functions():
    keep = helper.make_function("other", "F", ["x"], ["y"], [helper.make_node("Relu", ["x"], ["y"])],
                                [helper.make_opsetid("", 18)])
    drop = helper.make_function("hrx", "MoETop1", ["l", "e"], ["y"], [helper.make_node("Add", ["l", "e"], ["y"])],
                                [helper.make_opsetid("", 18)])
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([], "g", [x], [x]), functions=[keep, drop])
    assert [(f.domain, f.name) for f in plugins.strip_plugin_functions(model).functions] == [("other", "F")]


def _trt10_attribute(annotation, field: np.ndarray):
    """What TensorRT 10.x's tensorrt.plugin does with a plugin field for a declared attribute: a
    scalar annotation is built from the one-element field array (``int(array)``), an array
    annotation gets the array."""
    if annotation in (int, float, bool):
        return annotation(field)
    return field


def test_chunk_attribute_does_not_depend_on_int_of_an_array(registered):
    """NumPy >= 2.4 refuses int() of a one-element array, which broke `chunk: int` on TensorRT 10.x."""
    _, defs = registered
    field = np.array([16], dtype=np.int32)  # the parser passes an ONNX INT attribute as one INT32
    if np.lib.NumpyVersion(np.__version__) >= "2.4.0":
        with pytest.raises(TypeError):
            _trt10_attribute(int, field)  # the defect, on this NumPy
    d = defs["hrx::SelectiveScan"]
    value = _trt10_attribute(d["attrs"]["chunk"], field)
    assert plugins.attr_int(value) == 16 and plugins.attr_int(16) == 16
    y = d["register"](TensorDesc((4, 4, 8, 64), "float16"), TensorDesc((4, 4, 64)), TensorDesc((4,)),
                      TensorDesc((4, 4, 64)), TensorDesc((4, 4, 64)), TensorDesc((4,)), value)
    assert y.shape_expr == [4, 4, 8, 64]
