"""The ONNX toolkit's readers (hrx.export.onnx_tools): opset, metadata, what precision a graph is in; and
that an FP16 export is refused by ``hrx calibrate`` as half precision, not as already quantized."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hrx.calibration.graph import is_quantized
from hrx.calibration.pipeline import check_model
from hrx.errors import HRXError
from hrx.export.onnx_tools import (declared_precision, float_precision, graph_precision, metadata, opset,
                                   set_metadata, update_metadata)
from hrx.export.precision import convert_precision
from tests.graphs import norm_softmax_graph


def _qdq_graph() -> onnx.ModelProto:
    """``input -> QuantizeLinear -> DequantizeLinear -> Conv -> output``."""
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
             numpy_helper.from_array(np.array(0, np.int8), "zero"),
             numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")]
    nodes = [helper.make_node("QuantizeLinear", ["input", "scale", "zero"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["dq"], name="dq"),
             helper.make_node("Conv", ["dq", "w"], ["output"], name="conv")]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 4, 4])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4, 4, 4])
    return helper.make_model(helper.make_graph(nodes, "qdq", [x], [y], inits),
                             opset_imports=[helper.make_opsetid("", 18)])


def test_opset_reads_the_default_domain_and_takes_the_newest():
    model = norm_softmax_graph(18)
    assert opset(model) == 18
    model.opset_import.append(helper.make_opsetid("hrx", 1))
    assert opset(model) == 18
    model.opset_import.append(helper.make_opsetid("ai.onnx", 19))
    assert opset(model) == 19
    del model.opset_import[:]
    assert opset(model) == 0


def test_metadata_set_and_update_keep_the_order():
    model = norm_softmax_graph(18)
    assert metadata(model) == {}
    set_metadata(model, {"a": "1", "b": "2"})
    update_metadata(model, {"b": "3", "c": "4"})
    assert [(p.key, p.value) for p in model.metadata_props] == [("a", "1"), ("b", "3"), ("c", "4")]
    set_metadata(model, {"z": "0"})
    assert metadata(model) == {"z": "0"}


def test_graph_precision_from_the_graph_and_declared_precision_from_the_metadata():
    fp32 = norm_softmax_graph(18)
    fp16, _ = convert_precision(fp32, "fp16")
    qdq = _qdq_graph()
    assert [graph_precision(m) for m in (fp32, fp16, qdq)] == ["fp32", "fp16", "int8"]
    assert float_precision(qdq) == "fp32"
    assert [declared_precision(p) for p in ("fp32", "int8-qdq", "int8-qdq-fp16", "int8-qdq-bf16", "float16",
                                            "BF16", "odd")] == ["fp32", "int8", "int8", "int8", "fp16", "bf16", "odd"]


def test_an_fp16_export_is_not_quantized_and_calibrate_says_it_is_half(tmp_path):
    fp16, _ = convert_precision(norm_softmax_graph(18), "fp16")
    assert metadata(fp16)["precision"] == "fp16"
    assert is_quantized(fp16) == ""
    assert "QuantizeLinear" in is_quantized(_qdq_graph())
    int8 = norm_softmax_graph(18)
    set_metadata(int8, {"precision": "int8-qdq"})
    assert "precision=int8-qdq" in is_quantized(int8)
    path = tmp_path / "half.onnx"
    onnx.save(fp16, str(path))
    with pytest.raises(HRXError, match="the graph is fp16; calibrate the FP32 export") as e:
        check_model(path)
    assert "already quantized" not in str(e.value)
