"""The ONNX facts that export, precision conversion, calibration and the TensorRT builder share: one op
taxonomy, one precision vocabulary with its spellings, one is-quantized check.

* op sets: :data:`SCAN_OPS` (the selective scan's decays and step sizes), :data:`QDQ_OPS` and
  :data:`QUANT_OPS` (every quantized op ONNX Runtime or a quantizer may write);
* precisions: :data:`PRECISIONS` (what a graph computes in: ``int8`` is a Q/DQ graph), the other
  spellings callers pass (``int8-qdq`` from ModelInfo, ``float16``, ``half`` ...) and
  :func:`normalize_precision`;
* :func:`quantized_ops` / :func:`is_qdq`: the quantized ops a model holds, in its graph and its local
  functions.
"""
from __future__ import annotations

from typing import Literal

from hrx.errors import HRXError

SCAN_OPS = frozenset({"Exp", "Log", "CumSum", "Softplus"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
QUANT_OPS = QDQ_OPS | frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                                 "DynamicQuantizeLinear", "QGemm", "QLinearAdd", "QLinearMul"})

Precision = Literal["fp32", "fp16", "bf16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "bf16", "int8")
PRECISION_ALIASES = {"int8-qdq": "int8", "int8-qdq-fp16": "int8", "float32": "fp32", "float16": "fp16",
                     "half": "fp16", "bfloat16": "bf16"}


def normalize_precision(precision: str) -> Precision:
    """One of :data:`PRECISIONS` (accepts ModelInfo's ``int8-qdq`` and the spellings of :data:`PRECISION_ALIASES`)."""
    p = PRECISION_ALIASES.get(precision.lower(), precision.lower())
    if p not in PRECISIONS:
        raise HRXError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return p  # type: ignore[return-value]


def quantized_ops(model) -> list[str]:
    """The quantized op types (:data:`QUANT_OPS`) in ``model``'s graph and local functions, sorted."""
    ops = {n.op_type for n in model.graph.node} | {n.op_type for f in model.functions for n in f.node}
    return sorted(ops & QUANT_OPS)


def is_qdq(model) -> bool:
    """Whether the graph carries explicit quantization (QuantizeLinear / DequantizeLinear)."""
    return bool(set(quantized_ops(model)) & QDQ_OPS)
