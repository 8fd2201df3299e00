"""Small hand-made ONNX graphs shared by tests (precision conversion, TensorRT build stand-ins)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hrx.export.onnx_tools import Graph


def norm_softmax_graph(opset: int, side: int = 4, tail_conv: bool = False) -> onnx.ModelProto:
    """``input -> Conv -> (x - mean)^2 norm statistics -> MatMul logits -> Softmax [-> 1x1 Conv] -> output``
    on a ``[1, 4, side, side]`` map: the ops whose precision HRX decides (norm statistics and softmax stay
    FP32 islands in a half graph)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.array([1], np.int64), "axes"),
             numpy_helper.from_array(np.array(2.0, np.float32), "two"),
             numpy_helper.from_array(np.array(1e-6, np.float32), "eps")]
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("ReduceMean", ["c", "axes"], ["mu"], name="mean"),
             helper.make_node("Sub", ["c", "mu"], ["d"], name="sub"),
             helper.make_node("Pow", ["d", "two"], ["d2"], name="pow"),
             helper.make_node("ReduceMean", ["d2", "axes"], ["var"], name="var"),
             helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
             helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
             helper.make_node("Div", ["d", "sd"], ["n"], name="div"),
             helper.make_node("MatMul", ["n", "n"], ["logits"], name="qk"),
             helper.make_node("Softmax", ["logits"], ["p" if tail_conv else "output"], name="softmax")]
    if tail_conv:
        inits.append(numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w2"))
        nodes.append(helper.make_node("Conv", ["p", "w2"], ["output"], name="conv2"))
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, side, side])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, side, side])
    return helper.make_model(helper.make_graph(nodes, "norm_softmax", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", opset)])


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed tensor (after shape inference): value infos, I/O, initializers."""
    return Graph(onnx.shape_inference.infer_shapes(model)).types


def compute_types(model: onnx.ModelProto) -> dict[str, int]:
    """``{node name: element type of its first float input}``: the type each node computes in."""
    types = tensor_types(model)
    out = {}
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
    for n in model.graph.node:
        t = next((types[i] for i in n.input if i in types and types[i] in floats), None)
        if t is not None:
            out[n.name] = t
    return out
