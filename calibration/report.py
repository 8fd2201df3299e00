"""The ``hrx calibrate`` summary: what was calibrated on, quantized, kept float, tried, measured and written."""
from __future__ import annotations

from collections import Counter

from hrx.calibration.pipeline import CalibrationReport

REASONS = {
    "router": "MoE router (logits, ArgMax, their softmax and the router's own subgraph)",
    "scan": "selective scan Exp / CumSum / Softplus",
    "matmul": "attention and scan MatMul (activation x activation)",
    "softmax": "attention Softmax",
    "plugin": "hrx plugin nodes (their local functions untouched)",
    "output": "output convs",
    "slow": "Conv / Gemm INT8 would slow down on ONNX Runtime CPU (depthwise, few multiply-adds per element)",
}
SHOW_LABELS = ("output", "plugin")  # short lists worth printing in full


def _ops(counts: Counter) -> str:
    return ", ".join(f"{op} {n}" for op, n in counts.most_common())


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _names(items: list[str], limit: int = 8) -> str:
    more = f", ... {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def summary_lines(report: CalibrationReport) -> list[str]:
    """The lines ``hrx calibrate`` prints about ``report``: model, ranges, each attempt, the verdict."""
    i, c = report.info, report.cache
    chosen = report.chosen
    lines = [f"calibrate {report.model} ({i.arch} x{i.scale}, tile {i.tile}, batch {i.batch}, ops {i.ops}) "
             f"-> {report.output}"]
    where = c.images or "?"
    if report.ranges_source != "collected":
        why = "no images read" if report.ranges_source == "cache" else "same model, images and settings"
        lines.append(f"  ranges: {report.method}, reused from {report.ranges_path} ({c.key.samples} tiles of {where}, "
                     f"seed {c.key.seed}; {why})")
    else:
        lines.append(f"  ranges: {report.method} on {c.key.samples} random {i.tile}x{i.tile} crops of "
                     f"{_count(len(c.calib_images), 'image')} in {where} (seed {c.key.seed}); cached in {report.ranges_path}")
    lines.append(f"  held back for the gate: {c.eval_hr.shape[0]} tiles from {_names(c.held_back_images, 4)}")
    if c.padded:
        lines.append(f"  padded to a full crop (smaller than it): {_names(c.padded, 6)}")
    if chosen is None:
        return lines
    q = chosen.quant
    lines.append(f"  format: {q.target.describe()}; opset {q.opset}, {q.qdq_nodes} Q/DQ nodes")
    lines.append(f"  quantized (INT8): {len(q.quantized)} nodes ({_ops(q.quantized_ops)})")
    lines.append(f"  kept float ({sum(len(v) for v in q.kept.values())} nodes):")
    for reason, labels in q.kept.items():
        what = REASONS.get(reason, f"fallback '{reason}'")
        detail = _names(labels) if reason in SHOW_LABELS or reason not in REASONS else _ops(q.kept_ops[reason])
        lines.append(f"    {what}: {len(labels)} ({detail})")
    if q.rewired:
        lines.append(f"    ({q.rewired} float inputs of these moved off a Q/DQ pair shared with a quantized node)")
    if report.few_images:
        lines.append(f"  quality gate (max drop {report.threshold:.2f} dB = {report.max_drop:g} / 3: only "
                     f"{_count(report.images, 'image')}, so stem and head stay float and augmented tiles are scored too):")
    else:
        lines.append(f"  quality gate (max drop {report.max_drop:g} dB, {_count(report.images, 'image')}):")
    for a in report.attempts:
        verdict = "PASS" if a.quality.passed(report.threshold) else "FAIL"
        lines.append(f"    [{a.quant.step.name}] {a.quant.step.describe}: {a.quality.line()} -> {verdict}")
    engine = "OpenVINO CPU (f32 outside INT8)" if report.target == "openvino" else "ONNX Runtime CPU"
    lines.append(f"  {engine}, held-back tiles: FP32 {chosen.fp32_ms:.1f} ms, INT8 {chosen.int8_ms:.1f} ms per batch "
                 f"({chosen.fp32_ms / max(chosen.int8_ms, 1e-9):.2f}x; see benchmarks/{'bench_cpu_engines' if report.target == 'openvino' else 'bench_int8'}.py for a steady measurement)")
    if report.target == "trt":
        status = "; ".join(report.trt_problems) if report.trt_problems else "ops, opset, INT8 zero-point-0 Q/DQ OK"
        lines.append(f"  TensorRT static check (no engine built here): {status}")
    if report.written:
        precision = "int8-qdq" if report.precision == "fp32" else f"int8-qdq-{report.precision}"
        lines.append(f"wrote {report.output} (precision {precision}, fallback '{q.step.name}')")
    return lines
