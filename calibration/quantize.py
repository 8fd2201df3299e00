"""The QDQ pass: ONNX Runtime's static quantizer (``quantize_static``, QDQ format) driven with HRX's
choices of target format, kept-float nodes and fallback ladder.

Targets (``--target``):

* ``trt``: signed INT8 activations and weights, both symmetric (zero point 0), per-channel weights,
  float biases, Q/DQ only on the inputs of Conv / Gemm / MatMul (TensorRT fuses them; a quantized
  output would force 8-bit into whatever follows), one Q/DQ pair per consumer. This is what
  TensorRT 10's explicit quantization expects.
* ``cpu``: unsigned asymmetric activations and signed symmetric per-channel weights (U8S8, the fast
  path of ONNX Runtime's x86 kernels), int32 biases, quantized Conv outputs, so ONNX Runtime can fuse
  ``DQ -> Conv -> Q`` into ``QLinearConv``.
* ``openvino``: unsigned asymmetric activations and signed symmetric per-channel weights (U8S8, what
  OpenVINO's CPU plugin runs as INT8 convolutions on VNNI / AMX), float biases, Q/DQ only on the inputs
  of Conv / Gemm / MatMul. No ONNX Runtime intensity rule: OpenVINO runs the depthwise and thin 1x1 convs
  in INT8 as well (``benchmarks/bench_int8_openvino.py``, docs/cpu-engines.md).

Only Conv / ConvTranspose / Gemm and MatMul with a constant operand are quantized (the QDQ
quantizer ignores ``MatMulConstBOnly``: activation x activation MatMul are excluded by name, with the
other nodes of :func:`hrx.calibration.graph.float_plan` and the ladder's extra sets). After the
quantizer ran, :func:`guard_float_inputs` rewires any kept-float node that still read a Q/DQ'd
tensor (a tensor shared with a quantized consumer) back to the float tensor.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import onnx

from hrx.calibration.graph import float_plan, label, low_intensity_nodes, near_ends
from hrx.errors import HRXError, check_choice
from hrx.export.onnx_tools import COMPUTE_OPS, MOVE_OPS, QDQ_OPS, Graph, drop_dead, opset

if TYPE_CHECKING:
    from onnxruntime.quantization.calibrate import TensorsData

METHODS = ("entropy", "percentile", "minmax")
TARGETS = ("trt", "cpu", "openvino")
QUANTIZED_OPS = tuple(sorted(COMPUTE_OPS))  # the ops INT8 quantizes: Conv, ConvTranspose, Gemm, MatMul
CHUNK_PIXELS = 4 * 128 * 128  # input pixels per collect_data call (it holds every intermediate tensor)
# --target cpu keeps float the Conv / Gemm / MatMul with fewer multiply-adds per activation element than
# this (graph.intensity). Measured per conv with ONNX Runtime's profiler on default-x2 (AVX2, no VNNI,
# 1 thread, min of 9 runs): FP32 NCHWc Conv vs QLinearConv + its Q/DQ. Depthwise 3x3 / 7x7 (4.5-24):
# INT8 60-300 us slower each; stem 3 -> 32 (24.7): 400 us slower; 1x1 32 -> 32 / 64 -> 64 (16-32):
# 0-80 us slower; 1x1 64 -> 128 / 128 -> 64 / 64 -> 256 (43-51): 20-130 us faster; dense 3x3 (115-
# 460): 270-1270 us faster. Gemm: the attention's per-head 32 -> 16 / 64 -> 32 projections (10.7-21)
# ran 1.2 ms per tile faster float than as QGemm with their Q/DQ.
CPU_MIN_INTENSITY = 40.0
ENTROPY_BINS = 512  # KL search over (bins - 128) / 2 thresholds per tensor, in Python: 2048 is 7x slower


@dataclass(frozen=True)
class TargetFormat:
    name: str
    signed_activations: bool
    symmetric_activations: bool
    quantize_outputs: bool  # Q/DQ on Conv / Gemm / MatMul outputs (ORT's QLinearConv fusion needs it)
    quantize_bias: bool
    dedicated_pairs: bool
    per_channel: bool = True
    min_intensity: float = 0.0  # Conv / Gemm below this graph.intensity stay float (CPU: INT8 would be slower there)

    @property
    def short(self) -> str:
        """A short name of the INT8 layout, e.g. ``S8sym-S8sym-per-channel``."""
        acts = ("S8" if self.signed_activations else "U8") + ("sym" if self.symmetric_activations else "asym")
        return f"{acts}-S8sym{'-per-channel' if self.per_channel else ''}"

    def describe(self) -> str:
        """One line describing the target's activation and weight formats."""
        a = "signed" if self.signed_activations else "unsigned"
        s = "symmetric" if self.symmetric_activations else "asymmetric"
        return (f"{self.name}: {a} {s} INT8 activations, signed symmetric {'per-channel ' if self.per_channel else ''}"
                f"INT8 weights, {'int32' if self.quantize_bias else 'float'} biases")


TARGET_FORMATS = {
    "trt": TargetFormat("trt", signed_activations=True, symmetric_activations=True, quantize_outputs=False,
                        quantize_bias=False, dedicated_pairs=True),
    "cpu": TargetFormat("cpu", signed_activations=False, symmetric_activations=False, quantize_outputs=True,
                        quantize_bias=True, dedicated_pairs=False, min_intensity=CPU_MIN_INTENSITY),
    "openvino": TargetFormat("openvino", signed_activations=False, symmetric_activations=False,
                             quantize_outputs=False, quantize_bias=False, dedicated_pairs=False),
}


@dataclass(frozen=True)
class LadderStep:
    """One rung of the fallback ladder: a name and the extra nodes it keeps float (beyond the plan)."""

    name: str
    describe: str
    extra: Callable[[Graph], list[onnx.NodeProto]]


def _ends(g: Graph) -> list[onnx.NodeProto]:
    return [n for n in near_ends(g, 2) if n.op_type in QUANTIZED_OPS]


def _late(fraction: float) -> Callable[[Graph], list[onnx.NodeProto]]:
    """The ends plus the last ``fraction`` of the quantizable ops in graph (topological) order: errors of
    late layers reach the output with the least averaging (measured: they carry most of the drop)."""

    def pick(g: Graph) -> list[onnx.NodeProto]:
        ops = [n for n in g.nodes if n.op_type in QUANTIZED_OPS]
        return _ends(g) + ops[len(ops) - int(round(fraction * len(ops))):]

    return pick


LADDER: tuple[LadderStep, ...] = (
    LadderStep("default", "router, scan, softmax, attention / scan MatMul, plugins, output convs float", lambda g: []),
    LadderStep("ends", "+ stem and head convs float", _ends),
    LadderStep("late25", "+ the last quarter of the conv / Gemm layers float", _late(0.25)),
    LadderStep("late50", "+ the last half of the conv / Gemm layers float", _late(0.5)),
)


@dataclass
class QuantResult:
    path: Path
    target: TargetFormat
    step: LadderStep
    kept: dict[str, list[str]]  # reason -> labels of the nodes kept float
    kept_ops: dict[str, Counter]  # reason -> op types of those nodes
    quantized: list[str]  # labels of the compute nodes that run on INT8 inputs and weights
    quantized_ops: Counter
    qdq_nodes: int
    rewired: int  # kept-float inputs moved back off a shared Q/DQ pair
    opset: int


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice on the root logger and its calibrators print progress to
    stdout; keep the CLI output ours."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    check_choice("--method", method, METHODS)
    return {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
            "minmax": CalibrationMethod.MinMax}[method]


class TileReader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over ``[N, C, H, W]`` tiles, in model batches."""

    def __init__(self, tiles: np.ndarray, batch: int, input_name: str = "input") -> None:
        n = len(tiles)
        pad = (-n) % batch
        if pad:  # fill the last batch by repeating tiles: the ranges see nothing new
            tiles = np.concatenate([tiles, tiles[:pad]])
        self.batches = [np.ascontiguousarray(tiles[i:i + batch]) for i in range(0, len(tiles), batch)]
        self.input_name = input_name
        self._it = iter(self.batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch as a feed dict; None when done."""
        x = next(self._it, None)
        return None if x is None else {self.input_name: x}

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Read only batches ``start_index`` to ``end_index`` from now on."""
        self._it = iter(self.batches[start_index:end_index])


def collect_ranges(model_path: str | os.PathLike, tiles: np.ndarray, batch: int, method: str):
    """Run the FP32 model on ``tiles`` with ONNX Runtime's calibrator for ``method``; returns its
    ``TensorsData`` (per-tensor ranges of the inputs and outputs of the quantizable ops).
    Ranges are collected without symmetrizing, so one set serves both targets."""
    from onnxruntime.quantization.calibrate import TensorsData, create_calibrator

    options: dict = {"symmetric": False}
    if method == "entropy":  # ORT's default of 128 bins equals its 128 quantized bins: entropy would be min/max
        options.update(num_bins=ENTROPY_BINS, num_quantized_bins=128)
    with tempfile.TemporaryDirectory(prefix="hrx-calib-") as tmp, quiet_ort():
        calibrator = create_calibrator(Path(model_path), list(QUANTIZED_OPS),
                                       augmented_model_path=os.path.join(tmp, "augmented.onnx"),
                                       calibrate_method=_ort_method(method), extra_options=options,
                                       providers=["CPUExecutionProvider"])
        reader = TileReader(tiles, batch)
        step = max(1, CHUNK_PIXELS // (batch * tiles.shape[-1] * tiles.shape[-2]))
        for start in range(0, len(reader), step):  # a few batches at a time: the calibrator keeps every
            reader.set_range(start, start + step)  # intermediate tensor of a call in memory
            calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
    if not isinstance(ranges, TensorsData) or not ranges.data:
        raise HRXError(f"{model_path}: calibration collected no ranges (no Conv / Gemm / MatMul?)")
    return ranges


def exclusions(model: onnx.ModelProto, step: LadderStep,
               fmt: TargetFormat | None = None) -> dict[str, list[onnx.NodeProto]]:
    """``{reason: nodes}`` kept float by ``step``: the plan, the target's ``slow`` Conv / Gemm (those INT8
    would make slower: :data:`CPU_MIN_INTENSITY`), plus the step's extra nodes under its name."""
    g = Graph(model)
    by_name = {n.name: n for n in g.nodes}
    kept = {reason: [by_name[n] for n in names] for reason, names in float_plan(model).items()}
    names = {n.name for nodes in kept.values() for n in nodes}
    if fmt is not None and fmt.min_intensity > 0:
        slow = [n for n in low_intensity_nodes(g, fmt.min_intensity) if n.name not in names]
        if slow:
            kept["slow"] = slow
            names |= {n.name for n in slow}
    extra = [n for n in step.extra(g) if n.name not in names]
    if extra:
        kept[step.name] = extra
    return kept


def quantize_qdq(src: str | os.PathLike, dst: str | os.PathLike, ranges: TensorsData, target: str, step: LadderStep = LADDER[0],
                 method: str = "percentile") -> QuantResult:
    """Write the QDQ model of ``src`` to ``dst`` from ``ranges`` (``TensorsData`` of :func:`collect_ranges`,
    made with ``method``). The HRX metadata is stamped by :mod:`hrx.calibration.pipeline`."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    check_choice("--target", target, TARGETS)
    fmt = TARGET_FORMATS[target]
    model = onnx.load(str(src))
    for i, node in enumerate(model.graph.node):  # exclusions go by name: every node needs one
        if not node.name:
            node.name = f"hrx_unnamed_{i}_{node.op_type}"
    g0 = Graph(model)
    kept_nodes = exclusions(model, step, fmt)
    excluded = {n.name for nodes in kept_nodes.values() for n in nodes}
    compute = [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS]
    extra_options = {
        "ActivationSymmetric": fmt.symmetric_activations,
        "WeightSymmetric": True,
        "QuantizeBias": fmt.quantize_bias,
        "DedicatedQDQPair": fmt.dedicated_pairs,
        "OpTypesToExcludeOutputQuantization": [] if fmt.quantize_outputs else list(QUANTIZED_OPS),
    }
    ranges = TensorsData(_ort_method(method), dict(ranges.data))
    with tempfile.TemporaryDirectory(prefix="hrx-qdq-") as tmp, quiet_ort():
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(ranges, cache)
        out = Path(tmp) / "qdq.onnx"
        quantize_static(model, str(out), None, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OPS), per_channel=fmt.per_channel, reduce_range=False,
                        activation_type=QuantType.QInt8 if fmt.signed_activations else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=sorted(excluded),
                        nodes_to_quantize=[n for n in compute if n not in excluded],
                        calibrate_method=_ort_method(method), extra_options=extra_options,
                        calibration_cache_path=str(cache))
        qdq = onnx.load(str(out))
    # slow nodes are float for speed, not accuracy: they may read a DQ'd tensor. Rewiring them would give
    # the quantized conv before them a float consumer, and ONNX Runtime then cannot fuse it (QLinearConv)
    slow = {n.name for n in kept_nodes.get("slow", [])}
    rewired = guard_float_inputs(qdq, (excluded | _unquantized_compute(qdq)) - slow)
    g = Graph(qdq)
    quantized = [n for n in g.nodes if _is_quantized(g, n)]
    onnx.save(qdq, str(dst))
    return QuantResult(
        path=Path(dst), target=fmt, step=step,
        kept={r: [label(g0, n) for n in nodes] for r, nodes in kept_nodes.items()},
        kept_ops={r: Counter(_op(n) for n in nodes) for r, nodes in kept_nodes.items()},
        quantized=[label(g, n) for n in quantized], quantized_ops=Counter(n.op_type for n in quantized),
        qdq_nodes=sum(n.op_type in QDQ_OPS for n in qdq.graph.node),
        rewired=rewired, opset=opset(qdq))


def _op(node: onnx.NodeProto) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain else node.op_type


def _is_quantized(g: Graph, node: onnx.NodeProto) -> bool:
    """A compute op whose weight arrives through DequantizeLinear (the quantizer took it)."""
    if node.op_type not in COMPUTE_OPS or len(node.input) < 2:
        return False
    p = g.producer.get(node.input[1])
    return p is not None and p.op_type == "DequantizeLinear"


def _unquantized_compute(model: onnx.ModelProto) -> set[str]:
    """Compute ops the quantizer left float (activation x activation MatMul, excluded nodes)."""
    g = Graph(model)
    return {n.name for n in g.nodes if n.op_type in COMPUTE_OPS and not _is_quantized(g, n)}


def guard_float_inputs(model: onnx.ModelProto, keep: set[str]) -> int:
    """Make the kept-float nodes read float tensors: an input that reaches ``Q -> DQ`` of an activation,
    directly or through data-movement ops only (Split, Reshape, Transpose, ...), is rewired to the
    tensor before the ``Q``. Returns how many inputs were rewired; drops Q/DQ nodes left unused."""
    g = Graph(model)
    rewired = 0
    for node in g.nodes:
        if node.name not in keep:
            continue
        stack = [(node, i) for i, name in enumerate(node.input) if name and not g.is_const(name)]
        seen: set[tuple[str, int]] = set()
        while stack:
            n, i = stack.pop()
            if (n.name, i) in seen:
                continue
            seen.add((n.name, i))
            p = g.producer.get(n.input[i])
            if p is None:
                continue
            if p.op_type == "DequantizeLinear":
                q = g.producer.get(p.input[0])
                if q is not None and q.op_type == "QuantizeLinear":
                    n.input[i] = q.input[0]
                    rewired += 1
            elif p.op_type in MOVE_OPS and p.name not in keep:
                stack.extend((p, j) for j, name in enumerate(p.input) if name and not g.is_const(name))
    if rewired:
        drop_dead(model, QDQ_OPS)
    return rewired


def qdq_on(model: onnx.ModelProto, node_names: Sequence[str]) -> list[str]:
    """The named nodes that read a DequantizeLinear output or feed a QuantizeLinear (for tests and checks)."""
    g = Graph(model)
    by_name = {n.name: n for n in g.nodes}
    bad = []
    for name in node_names:
        n = by_name.get(name)
        if n is None:
            continue
        reads = any(g.producer.get(i) is not None and g.producer[i].op_type == "DequantizeLinear" for i in n.input)
        feeds = any(c.op_type == "QuantizeLinear" for o in n.output for c in g.consumers.get(o, []))
        if reads or feeds:
            bad.append(name)
    return bad


def trt_problems(model: onnx.ModelProto) -> list[str]:
    """What TensorRT's ONNX parser would refuse in a QDQ model, checked statically (no TensorRT needed):
    unsupported ops / opset (:mod:`hrx.runtime.trt.ops`), non-zero or non-INT8 zero points, DequantizeLinear
    of anything but INT8 (e.g. an int32 bias)."""
    from onnx import numpy_helper

    from hrx.runtime.trt.ops import opset_problems, unsupported_ops

    problems = [f"unsupported op {op}" for op in unsupported_ops(model)] + opset_problems(model)
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type not in QDQ_OPS:
            continue
        x = inits.get(n.input[0])
        if n.op_type == "DequantizeLinear" and x is not None and x.data_type != onnx.TensorProto.INT8:
            problems.append(f"{n.name}: dequantizes {onnx.TensorProto.DataType.Name(x.data_type)} (TensorRT takes INT8)")
        zp = inits.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if zp is None:
            continue
        if zp.data_type != onnx.TensorProto.INT8:
            problems.append(f"{n.name}: {onnx.TensorProto.DataType.Name(zp.data_type)} zero point (TensorRT needs INT8)")
        elif np.any(numpy_helper.to_array(zp) != 0):
            problems.append(f"{n.name}: non-zero zero point (TensorRT needs symmetric quantization)")
    return problems
