"""The builder's decisions that need no TensorRT: precision from the graph, inspector JSON, summary."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hrx.errors import HRXError
from hrx.runtime.trt.builder import (
    BuildOptions,
    BuildReport,
    graph_precision,
    is_qdq,
    options_for,
    precision_counts,
    resolve_precision,
)
from hrx.runtime.trt.cache import EngineRecord


def _model(ops, weight_type=TensorProto.FLOAT):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])
    nodes = [helper.make_node(op, ["input"], [f"o{i}"]) for i, op in enumerate(ops)]
    w = numpy_helper.from_array(np.ones(2, np.float32), "w")
    if weight_type == TensorProto.FLOAT16:
        w = numpy_helper.from_array(np.ones(2, np.float16), "w")
    elif weight_type == TensorProto.BFLOAT16:
        w = helper.make_tensor("w", TensorProto.BFLOAT16, [2], [1.0, 1.0])
    return helper.make_model(helper.make_graph(nodes, "g", [x], [x], [w]))


def test_qdq_and_graph_precision_detection():
    assert is_qdq(_model(["QuantizeLinear", "DequantizeLinear", "Conv"]))
    assert not is_qdq(_model(["Conv", "Relu"]))
    assert graph_precision(_model(["Conv"])) == "fp32"
    assert graph_precision(_model(["Conv"], TensorProto.FLOAT16)) == "fp16"
    assert graph_precision(_model(["Conv"], TensorProto.BFLOAT16)) == "bf16"


FP32, FP16, QDQ = _model(["Conv"]), _model(["Conv"], TensorProto.FLOAT16), _model(["QuantizeLinear", "Conv"])
QDQ16 = _model(["QuantizeLinear", "Conv"], TensorProto.FLOAT16)


@pytest.mark.parametrize("opts, model, precision, convert", [
    (BuildOptions(), FP32, "fp32", None),
    (BuildOptions(fp16=True), FP32, "fp16", "fp16"),  # converted with FP32 islands first
    (BuildOptions(bf16=True), FP32, "bf16", "bf16"),
    (BuildOptions(), FP16, "fp16", None),  # an FP16 export builds as it is
    (BuildOptions(fp16=True), FP16, "fp16", None),
    (BuildOptions(), QDQ, "int8", None),  # a Q/DQ model builds as it is
    (BuildOptions(int8=True), QDQ, "int8", None),
    (BuildOptions(fp16=True), QDQ16, "int8", None),  # calibrate --precision fp16
])
def test_precision_comes_from_the_graph(opts, model, precision, convert):
    choice = resolve_precision(opts, model)
    assert (choice.precision, choice.convert_to) == (precision, convert)


def test_contradictions_are_refused_in_one_line():
    with pytest.raises(HRXError, match="hrx calibrate"):
        resolve_precision(BuildOptions(int8=True), FP32)
    with pytest.raises(HRXError, match="exclude each other"):
        resolve_precision(BuildOptions(fp16=True, bf16=True), FP32)
    with pytest.raises(HRXError, match="calibrate with .*--precision fp16"):
        resolve_precision(BuildOptions(fp16=True), QDQ)
    with pytest.raises(HRXError, match="re-export"):
        resolve_precision(BuildOptions(bf16=True), FP16)
    assert "explicit scales" in resolve_precision(BuildOptions(), QDQ).notes[0]


def test_options_for_round_trips():
    assert options_for("fp32") == {} and options_for("fp16") == {"fp16": True}
    assert options_for("int8-qdq") == {"int8": True} and options_for("bf16") == {"bf16": True}
    with pytest.raises(HRXError, match="unknown precision 'best'"):
        options_for("best")


def test_precision_counts_from_the_tensorrt_10_inspector():
    info = {"Bindings": ["input", "output"], "Layers": [
        {"Name": "conv", "LayerType": "CaskConvolution", "Outputs": [{"Format/Datatype": "Channel major FP16 format"}]},
        {"Name": "sm", "LayerType": "CaskSoftMax", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "q", "LayerType": "Scale", "Outputs": [{"Format/Datatype": "Row major Int8 format"}]},
        {"Name": "r", "LayerType": "Reformat", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "p", "LayerType": "PluginV3", "Outputs": [{"Format/Datatype": "Row major linear FP16"}]},
        "names-only entry",
    ]}
    assert precision_counts(info) == {"FP16": 2, "FP32": 1, "INT8": 1}
    assert precision_counts({}) == {}


def test_precision_counts_from_the_tensorrt_11_inspector():
    """TensorRT 11 replaced ``Bindings`` with ``I/O Tensors`` and split ``Format/Datatype`` into
    ``Format`` and ``DataType`` (TensorRT's names: Float, Half, BFloat16, Int8)."""
    info = {"I/O Tensors": [{"Name": "input", "IOMode": "Input", "DataType": "Float", "Dimensions": [1, 3, 64, 64]}],
            "Layers": [
                {"Name": "conv", "LayerType": "CaskConvolution",
                 "Outputs": [{"Name": "c", "Format": "Channel major (kHWC8)", "DataType": "Half"}]},
                {"Name": "sm", "LayerType": "CaskSoftMax",
                 "Outputs": [{"Name": "s", "Format": "Row major linear (kLINEAR)", "DataType": "Float"}]},
                {"Name": "b", "LayerType": "CaskConvolution",
                 "Outputs": [{"Name": "b", "Format": "Row major linear (kLINEAR)", "DataType": "BFloat16"}]},
                {"Name": "q", "LayerType": "Scale", "Outputs": [{"Name": "q", "Format": "kLINEAR", "DataType": "Int8"}]},
                {"Name": "r", "LayerType": "Reformat", "Outputs": [{"Name": "r", "DataType": "Half"}]},
            ]}
    assert precision_counts(info) == {"FP16": 1, "FP32": 1, "BF16": 1, "INT8": 1}


def test_summary_lists_precisions_islands_and_plugins(tmp_path):
    record = EngineRecord(onnx_sha256="0" * 64, onnx_path="m.onnx", precision="fp16", tensorrt_version="11.4.0",
                          gpu_name="NVIDIA L4", compute_capability="8.9", input_name="input",
                          input_shape=[1, 3, 64, 64], output_name="output", output_shape=[1, 3, 128, 128],
                          plugins=["hrx::MoETop1"], plugin_impl="jit", fp32_islands={"softmax": 38, "norm": 197})
    report = BuildReport(tmp_path / "m.engine", record, 12.34, {"FP16": 40, "FP32": 9}, ["Q/DQ model"])
    text = "\n".join(report.summary_lines())
    assert "in 12.3 s" in text and "fp16, strongly typed" in text and "NVIDIA L4" in text
    assert "FP16 40, FP32 9" in text
    assert "hrx::MoETop1 (jit)" in text
    assert "FP32 islands in the graph: softmax 38, norm 197" in text
    assert "note: Q/DQ model" in text
