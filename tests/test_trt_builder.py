"""The builder's decisions that need no TensorRT: precision, FP16 pinning, the build summary."""
from __future__ import annotations

import pytest
from onnx import TensorProto, helper

from hrx.errors import HRXError
from hrx.runtime.trt.builder import (
    BuildOptions,
    BuildReport,
    LayerView,
    is_qdq,
    options_for,
    precision_counts,
    precision_flags,
    resolve_precision,
    select_fp32_layers,
)
from hrx.runtime.trt.cache import EngineRecord


def _model(ops):
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1])
    nodes = [helper.make_node(op, ["input"], [f"o{i}"]) for i, op in enumerate(ops)]
    return helper.make_model(helper.make_graph(nodes, "g", [x], [x]))


def test_qdq_detection():
    assert is_qdq(_model(["QuantizeLinear", "DequantizeLinear", "Conv"]))
    assert not is_qdq(_model(["Conv", "Relu"]))


@pytest.mark.parametrize("opts, qdq, want", [
    (BuildOptions(), False, "fp32"),
    (BuildOptions(fp16=True), False, "fp16"),
    (BuildOptions(int8=True), True, "int8"),
    (BuildOptions(), True, "int8"),  # a Q/DQ model builds INT8 with its explicit scales
    (BuildOptions(fp16=True), True, "int8"),
    (BuildOptions(best=True), False, "best"),
    (BuildOptions(best=True, int8=True), True, "best"),
])
def test_precision_resolution(opts, qdq, want):
    assert resolve_precision(opts, qdq)[0] == want


def test_qdq_without_int8_flag_is_noted_and_int8_without_qdq_refused():
    assert "explicit scales" in resolve_precision(BuildOptions(), True)[1][0]
    with pytest.raises(HRXError, match="hrx calibrate"):
        resolve_precision(BuildOptions(int8=True), False)


def test_precision_flags():
    assert precision_flags("fp32", False) == []
    assert precision_flags("fp16", False) == ["FP16"]
    assert precision_flags("int8", True) == ["INT8", "FP16"]
    assert "INT8" in precision_flags("best", True) and "INT8" not in precision_flags("best", False)
    for p in ("fp32", "fp16", "int8", "best"):
        opts = BuildOptions(**options_for(p))
        assert resolve_precision(opts, qdq=p in ("int8", "best"))[0] == p
    assert options_for("int8-qdq") == {"int8": True}


def _attention_like() -> list[LayerView]:
    """conv -> matmul(q,k) -> softmax -> matmul(v) ; norm stats ; scan exp/cumsum ; MoE plugin."""
    return [
        LayerView(0, "/conv", "CONVOLUTION"),
        LayerView(1, "/attn/MatMul", "MATRIX_MULTIPLY", (0, 0)),
        LayerView(2, "/attn/Softmax", "SOFTMAX", (1,)),
        LayerView(3, "/attn/MatMul_1", "MATRIX_MULTIPLY", (2, 0)),
        LayerView(4, "/norm/ReduceMean", "REDUCE", (3,)),
        LayerView(5, "/norm/Pow", "ELEMENTWISE:POW", (3, None)),
        LayerView(6, "/norm/Sqrt", "UNARY:SQRT", (4,)),
        LayerView(7, "/ssm/Exp", "UNARY:EXP", (6,)),
        LayerView(8, "/ssm/CumSum", "CUMULATIVE", (7,)),
        LayerView(9, "/ssm/Mul", "ELEMENTWISE:PROD", (8, 7)),
        LayerView(10, "/router/fc2/Conv", "CONVOLUTION", (9,)),
        LayerView(11, "node_moe_top1", "PLUGIN:MoETop1", (10, 3)),
        LayerView(12, "/shape/ReduceMax", "REDUCE", (11,), float_output=False),
        LayerView(13, "/head/Relu", "ACTIVATION", (11,)),
    ]


def test_fp16_pinning_selects_the_overflow_prone_layers():
    chosen = select_fp32_layers(_attention_like())
    assert chosen == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    # 1: feeds the softmax; 10: feeds the MoE plugin's logits; 9: all its inputs are pinned;
    # 12: integer output; 0, 3, 11, 13: ordinary layers


def test_fp16_pinning_walks_back_from_softmax_to_the_matmul():
    layers = [
        LayerView(0, "q", "CONVOLUTION"),
        LayerView(1, "qk", "MATRIX_MULTIPLY", (0, 0)),
        LayerView(2, "scale", "CONSTANT"),
        LayerView(3, "scaled", "ELEMENTWISE:PROD", (1, 2)),
        LayerView(4, "bias", "CONSTANT"),
        LayerView(5, "biased", "ELEMENTWISE:SUM", (3, 4)),
        LayerView(6, "reshaped", "SHUFFLE", (5,)),
        LayerView(7, "attn", "SOFTMAX", (6,)),
    ]
    assert select_fp32_layers(layers) == [1, 3, 5, 6, 7]


def test_fp16_pinning_keeps_norm_statistics_chains_in_fp32():
    layers = [
        LayerView(0, "node_conv2d", "CONVOLUTION"),
        LayerView(1, "node_mean", "REDUCE", (0,)),
        LayerView(2, "node_sub", "ELEMENTWISE:SUB", (0, 1)),
        LayerView(3, "node_pow_1", "ELEMENTWISE:POW", (2, 4)),
        LayerView(4, "two", "CONSTANT"),
        LayerView(5, "node_mean_1", "REDUCE", (3,)),
        LayerView(6, "eps", "CONSTANT"),
        LayerView(7, "node_add", "ELEMENTWISE:SUM", (5, 6)),
        LayerView(8, "node_Sqrt_29", "UNARY:SQRT", (7,)),
        LayerView(9, "node_rsqrt", "UNARY:RECIP", (8,)),
        LayerView(10, "node_mul", "ELEMENTWISE:PROD", (2, 9)),
    ]
    assert select_fp32_layers(layers) == [1, 3, 5, 7, 8, 9]


def test_fp16_pinning_by_name():
    layers = [LayerView(0, "/blocks.0/LayerNorm_custom/Mul", "ELEMENTWISE:PROD"),
              LayerView(1, "/x/Conv", "CONVOLUTION", (0,))]
    assert select_fp32_layers(layers) == [0]


def test_precision_counts_from_the_engine_inspector():
    info = {"Layers": [
        {"Name": "conv", "LayerType": "CaskConvolution", "Outputs": [{"Format/Datatype": "Channel major FP16 format"}]},
        {"Name": "sm", "LayerType": "CaskSoftMax", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "q", "LayerType": "Scale", "Outputs": [{"Format/Datatype": "Row major Int8 format"}]},
        {"Name": "r", "LayerType": "Reformat", "Outputs": [{"Format/Datatype": "Row major linear FP32"}]},
        {"Name": "p", "LayerType": "PluginV3", "Outputs": [{"Format/Datatype": "Row major linear FP16"}]},
        "names-only entry",
    ]}
    assert precision_counts(info) == {"FP16": 2, "FP32": 1, "INT8": 1}
    assert precision_counts({}) == {}


def test_summary_lists_precisions_plugins_and_pinned_layers(tmp_path):
    record = EngineRecord(onnx_sha256="0" * 64, onnx_path="m.onnx", precision="fp16", tensorrt_version="10.7.0",
                          gpu_name="NVIDIA L4", compute_capability="8.9", input_name="input",
                          input_shape=[1, 3, 64, 64], output_name="output", output_shape=[1, 3, 128, 128],
                          plugins=["hrx::MoETop1"], plugin_impl="jit", fp32_layers=["/attn/Softmax"])
    report = BuildReport(tmp_path / "m.engine", record, 12.34, {"FP16": 40, "FP32": 9},
                         [f"layer{i}" for i in range(10)], ["Q/DQ model: built as INT8"])
    text = "\n".join(report.summary_lines())
    assert "in 12.3 s" in text and "fp16" in text and "NVIDIA L4" in text
    assert "FP16 40, FP32 9" in text
    assert "hrx::MoETop1 (jit)" in text
    assert "pinned to FP32" in text and "(10 in all)" in text
    assert "note: Q/DQ model" in text
