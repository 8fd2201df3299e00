"""Static check of ONNX graphs against TensorRT's ONNX operator list (no TensorRT needed)."""
from __future__ import annotations

import json
from importlib import resources

import onnx
from onnx import TensorProto, helper

from hrx.runtime.trt import ops
from hrx.export.onnx_tools import PLUGIN_DOMAIN


def _io(shape=(1, 3, 8, 8)):
    return (helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape)),
            helper.make_tensor_value_info("output", TensorProto.FLOAT, list(shape)))


def _model(nodes, functions=(), opset=17, extra_opsets=()):
    x, y = _io()
    graph = helper.make_graph(nodes, "g", [x], [y])
    imports = [helper.make_opsetid("", opset), *extra_opsets]
    return helper.make_model(graph, opset_imports=imports, functions=list(functions))


def _scan_function(body_op: str = "Exp") -> onnx.FunctionProto:
    nodes = [helper.make_node("CumSum", ["x", "axis"], ["c"]), helper.make_node(body_op, ["c"], ["y"])]
    return helper.make_function(PLUGIN_DOMAIN, "SelectiveScan", ["x", "axis"], ["y"], nodes,
                                [helper.make_opsetid("", 17)])


def _plugin_model(body_op: str = "Exp", with_function: bool = True) -> onnx.ModelProto:
    axis = helper.make_node("Constant", [], ["axis"], value=helper.make_tensor("a", TensorProto.INT64, [], [1]))
    scan = helper.make_node("SelectiveScan", ["input", "axis"], ["output"], domain=PLUGIN_DOMAIN, name="scan0",
                            chunk=32, plugin_version="1", plugin_namespace="hrx")
    funcs = [_scan_function(body_op)] if with_function else []
    return _model([axis, scan], funcs, extra_opsets=[helper.make_opsetid(PLUGIN_DOMAIN, 1)])


def test_operator_list_is_data_with_its_source():
    data = json.loads(resources.files("hrx.runtime.trt").joinpath("trt_supported_ops.json").read_text())
    assert data["source"]["project"] == "onnx/onnx-tensorrt"
    assert data["source"]["file"] == "docs/operators.md"
    assert data["source"]["tensorrt_version"] and data["source"]["retrieved"]
    table = ops.supported_ops()
    assert table.opset_range == (9, 24)
    # operators HRX graphs use, all "Y" in the matrix
    for op in ("Conv", "Softmax", "CumSum", "Exp", "MatMul", "ReduceMean", "Resize", "DepthToSpace",
               "QuantizeLinear", "DequantizeLinear", "ArgMax", "Einsum", "Trilu", "Where", "Pad"):
        assert op in table.supported, op
    for op in ("Unique", "ConvInteger", "SequenceAt", "Col2Im"):  # "N" in the matrix
        assert op in table.unsupported and op not in table.supported
    assert len(table.supported) > 150


def test_supported_graph_has_no_findings():
    m = _model([helper.make_node("Relu", ["input"], ["r"]), helper.make_node("Softmax", ["r"], ["output"])])
    assert ops.unsupported_ops(m) == []
    assert ops.opset_problems(m) == []


def test_unsupported_default_and_foreign_domain_ops_are_named():
    m = _model([helper.make_node("Unique", ["input"], ["u"]),
                helper.make_node("FusedConv", ["u"], ["v"], domain="com.microsoft"),
                helper.make_node("NotAnOnnxOp", ["v"], ["output"])],
               extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    assert ops.unsupported_ops(m) == ["NotAnOnnxOp", "Unique", "com.microsoft::FusedConv"]


def test_subgraph_ops_are_checked():
    then_g = helper.make_graph([helper.make_node("Unique", ["input"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Relu", ["input"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    cond = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True]))
    m = _model([cond, helper.make_node("If", ["c"], ["output"], then_branch=then_g, else_branch=else_g)])
    assert ops.unsupported_ops(m) == ["Unique"]


def test_hrx_nodes_count_as_plugins():
    assert ops.unsupported_ops(_plugin_model()) == []
    # without the function, only the plugin path can take the node
    assert ops.unsupported_ops(_plugin_model(with_function=False)) == []
    assert ops.unsupported_ops(_plugin_model(with_function=False), plugins=False) == ["hrx::SelectiveScan"]


def test_without_plugins_the_local_function_body_is_checked():
    assert ops.unsupported_ops(_plugin_model("Exp"), plugins=False) == []
    assert ops.unsupported_ops(_plugin_model("Unique"), plugins=False) == ["Unique"]
    # with plugins the body is not what TensorRT builds
    assert ops.unsupported_ops(_plugin_model("Unique"), plugins=True) == []


def test_unknown_hrx_op_is_unsupported():
    m = _model([helper.make_node("Mystery", ["input"], ["output"], domain=PLUGIN_DOMAIN)],
               extra_opsets=[helper.make_opsetid(PLUGIN_DOMAIN, 1)])
    assert ops.unsupported_ops(m) == ["hrx::Mystery"]


def test_opset_outside_range_is_reported():
    m = _model([helper.make_node("Relu", ["input"], ["output"])], opset=8)
    m.ir_version = 7
    assert ops.opset_problems(m) == ["opset 8 is outside TensorRT's supported range 9-24"]


def test_accepts_a_path(tmp_path):
    p = tmp_path / "m.onnx"
    onnx.save(_model([helper.make_node("Unique", ["input"], ["output"])]), p)
    assert ops.unsupported_ops(p) == ["Unique"]

