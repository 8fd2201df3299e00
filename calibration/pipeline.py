"""``hrx calibrate`` end to end: FP32 ONNX + images (or the ranges cache) -> QDQ ONNX that passed the gate.

1. check the model (an HRX FP32 export, not already quantized);
2. ranges: from the cache next to the output when it matches (same model, method, images, samples,
   seed), else tiles from ``--images`` (:mod:`hrx.calibration.data`) through ONNX Runtime's calibrator,
   then cached (:mod:`hrx.calibration.cache`);
3. for each rung of the fallback ladder (:data:`hrx.calibration.quantize.LADDER`; only the first with
   ``fallback=False``): quantize, run FP32 and INT8 on the held-back tiles, stop at the first that passes;
4. write the passing model (or, with ``force``, the one with the smallest drop) with its metadata.

Few images (fewer than :data:`hrx.calibration.data.FEW_IMAGES`): the gate cannot see beyond them. Measured
on default-x2 calibrated on one dim photo (``benchmarks/bench_calib_generalise.py``): the first rung
passed its own held-back half with 0.06 dB (cpu) / 0.21 dB (trt) and then lost 0.51 / 0.90 dB on
colourful photos it never saw; ranges from colourful photos, min/max ranges and augmented calibration
tiles lost as much (so the ranges were not the cause), while keeping the stem and head convs float
brought every unseen photo under 0.15 dB. So with few images (unless ``few_image_guard=False``): a
warning, the ladder starts at ``ends`` (stem and head float), the gate also scores augmented copies of
its held-back tiles (:func:`hrx.calibration.data.augment`: brighter, more contrasted, more colourful),
and it asks for a third of ``max_drop``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


from hrx.calibration.cache import CacheKey, RangesCache, cache_paths, heldout_for, images_sha256, load, save
from hrx.calibration.data import FEW_IMAGES, augment, bicubic_down, image_count
from hrx.calibration.quality import QualityReport, compare, run_model
from hrx.calibration.quantize import LADDER, METHODS, TARGETS, QuantResult, quantize_qdq, trt_problems
from hrx.errors import HRXError, check_choice
from hrx.export.onnx_tools import (FLOAT_PRECISIONS, QDQ_OPS, declared_precision, float_precision, metadata, opset,
                                   set_metadata)
from hrx.paths import file_sha256

DEFAULT_METHOD = "percentile"
FEW_IMAGE_MARGIN = 3.0  # with few images the gate asks for max_drop / 3 (measured gap: module doc)
DEFAULT_TARGET = "trt"
PRECISION = "int8-qdq"

Log = Callable[[str], None]


@dataclass
class CalibrateOptions:
    model: Path
    output: Path | None = None
    images: Path | None = None
    method: str | None = None  # None: percentile, or the cached method when no images are given
    target: str = DEFAULT_TARGET
    samples: int = 32
    eval_tiles: int = 16
    max_drop: float = 0.3
    force: bool = False
    fallback: bool = True
    seed: int = 0
    ranges: Path | None = None  # ranges cache to read / write (default: next to the output)
    threads: int = 0  # threads of the gate's engine (0: its default)
    few_image_guard: bool = True  # with few images: warn, stem/head float, augmented gate, max_drop / 3
    precision: str = "fp32"  # outside the INT8 convs: fp32, or fp16/bf16 with FP32 islands (strongly typed TensorRT)


@dataclass
class Attempt:
    quant: QuantResult
    quality: QualityReport
    fp32_ms: float  # the gate's engine (gate_engine), median ms per batch on the held-back tiles
    int8_ms: float


@dataclass
class CalibrationReport:
    model: Path
    output: Path
    info: object  # hrx.interface.ModelInfo of the FP32 model
    method: str
    target: str
    max_drop: float
    cache: RangesCache
    ranges_source: str  # "collected", "cache" (no images given) or "cache-same" (images and settings unchanged)
    ranges_path: Path
    attempts: list[Attempt] = field(default_factory=list)
    chosen: Attempt | None = None
    written: bool = False
    trt_problems: list[str] = field(default_factory=list)
    images: int = 0  # distinct images the ranges and the gate came from
    gate_drop: float | None = None  # the drop the gate asked for (max_drop, or less with few images)
    few_images: bool = False  # the few-image guard was applied

    @property
    def threshold(self) -> float:
        """The PSNR drop the gate allows (``gate_drop`` when set, else ``max_drop``)."""
        return self.max_drop if self.gate_drop is None else self.gate_drop
    precision: str = "fp32"  # outside the INT8 convs

    @property
    def passed(self) -> bool:
        """Whether a candidate was chosen and passed the gate."""
        return self.chosen is not None and self.chosen.quality.passed(self.threshold)


def gate_engine(target: str) -> str:
    """The engine the gate runs both models on: OpenVINO (f32) for ``--target openvino``, else ONNX Runtime."""
    return "openvino" if target == "openvino" else "onnxruntime"


def default_output(model: Path) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` beside it."""
    stem = model.name[:-5] if model.name.endswith(".onnx") else model.name
    return model.with_name(stem + ".int8.onnx")


def check_model(path: Path):
    """Load ``path`` and its :class:`ModelInfo`; refuse quantized, half-precision, non-HRX and non-float32
    models."""
    import onnx

    from hrx.calibration.graph import is_quantized
    from hrx.interface import ModelInfo, load_onnx

    if not path.is_file():
        raise HRXError(f"{path}: no such ONNX file")
    model = load_onnx(path)
    reason = is_quantized(model)
    if reason:
        raise HRXError(f"{path}: already quantized ({reason}); calibrate the FP32 export from `hrx export`")
    half = float_precision(model)
    if half == "fp32" and declared_precision(metadata(model).get("precision", "fp32")) in ("fp16", "bf16"):
        half = declared_precision(metadata(model)["precision"])
    if half != "fp32":
        raise HRXError(f"{path}: the graph is {half}; calibrate the FP32 export from `hrx export` "
                       f"(`--precision {half}` keeps {half} outside the INT8 convolutions)")
    info = ModelInfo.from_props(metadata(model), str(path))
    elem = model.graph.input[0].type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise HRXError(f"{path}: input is {onnx.TensorProto.DataType.Name(elem)}; calibrate the float32 export")
    return model, info


def _ranges(opts: CalibrateOptions, info, model_sha: str, json_path: Path, npz_path: Path,
            log: Log | None) -> tuple[RangesCache, str, str]:
    """``(cache, method, source)``, source as :attr:`CalibrationReport.ranges_source`."""
    from hrx.calibration.data import list_images, sample_tiles
    from hrx.calibration.quantize import collect_ranges

    if opts.images is None:
        cache = load(json_path, npz_path)
        if cache.key.model_sha256 != model_sha:
            raise HRXError(f"{json_path}: the cached ranges belong to another model (sha256 {cache.key.model_sha256[:12]}); "
                           "pass --images DIR to calibrate this one")
        if opts.method is not None and opts.method != cache.key.method:
            raise HRXError(f"{json_path}: the cache holds {cache.key.method} ranges; pass --method {cache.key.method}, "
                           f"or --images DIR to calibrate with {opts.method}")
        return cache, cache.key.method, "cache"
    method = opts.method or DEFAULT_METHOD
    files = list_images(opts.images)
    key = CacheKey(model_sha, method, opts.samples, opts.seed, info.tile, opts.eval_tiles,
                   images_sha256(files, Path(opts.images)))
    if json_path.is_file() and npz_path.is_file():
        try:
            cached = load(json_path, npz_path)
        except HRXError:
            cached = None
        if cached is not None and cached.key == key:
            return cached, method, "cache-same"
    if log:
        log(f"collecting {method} ranges on {opts.samples} tiles of {info.tile}x{info.tile} from {opts.images} ...")
    tiles = sample_tiles(opts.images, info.tile, info.scale, info.in_channels, opts.samples, opts.eval_tiles, opts.seed)
    ranges = collect_ranges(opts.model, tiles.calib, info.batch, method)
    cache = RangesCache(key, ranges, tiles.eval_lr, tiles.eval_hr, str(opts.images), tiles.calib_images,
                        tiles.held_back_images, tiles.padded)
    save(cache, json_path, npz_path)
    return cache, method, "collected"


def _metadata(info, report: CalibrationReport, attempt: Attempt, model_sha: str) -> dict[str, str]:
    import onnxruntime

    q, k = attempt.quant, report.cache.key
    extra = dict(info.extra)
    extra.update({
        "quant_target": report.target,
        "quant_format": q.target.short,
        "quant_method": report.method,
        "quant_tool": f"onnxruntime {onnxruntime.__version__} quantize_static (QDQ)",
        "quant_samples": str(k.samples),
        "quant_seed": str(k.seed),
        "quant_fallback": q.step.name,
        "quant_quantized": json.dumps(dict(q.quantized_ops), sort_keys=True),
        "quant_float": json.dumps({r: len(v) for r, v in q.kept.items()}),
        "quant_float_nodes": json.dumps(q.kept),
        "quant_psnr": json.dumps({"fp32": round(attempt.quality.psnr_fp32, 4), "int8": round(attempt.quality.psnr_int8, 4),
                                  "drop": round(attempt.quality.drop, 4), "tiles": attempt.quality.tiles}),
        "quant_gate": json.dumps({"images": report.images, "max_drop": round(report.threshold, 4),
                                  "few_images": report.few_images}),
        "quant_source_sha256": model_sha,
    })
    precision = PRECISION if report.precision == "fp32" else f"{PRECISION}-{report.precision}"
    stamped = dataclasses.replace(info, precision=precision, opset=q.opset or info.opset, extra=extra)
    return stamped.to_props()


def _write(attempt: Attempt, output: Path, props: dict[str, str]) -> None:
    import onnx

    from hrx.export.onnx_export import save_onnx

    model = onnx.load(str(attempt.quant.path))
    kept = {k: v for k, v in metadata(model).items() if k in ("fp32_islands", "io_precision")}
    set_metadata(model, {**props, **kept})
    save_onnx(model, output)


def half_qdq(path: Path, precision: str) -> None:
    """Q/DQ model at ``path`` -> INT8 convs with ``precision`` (fp16/bf16) elsewhere and the FP32
    islands of :mod:`hrx.export.precision`, in place: the scales become half with the activations
    they quantize (QuantizeLinear/DequantizeLinear take FP16 from opset 19); before opset 19 the
    Q/DQ nodes stay FP32 behind Casts."""
    import onnx

    from hrx.export.precision import convert_precision

    model = onnx.load(str(path))
    qdq = [n.name for n in model.graph.node if n.op_type in QDQ_OPS]
    converted, _ = convert_precision(model, precision, extra_fp32=qdq if opset(model) < 19 else ())
    onnx.save(converted, str(path))


def calibrate(opts: CalibrateOptions, log: Log | None = None) -> CalibrationReport:
    """Run ``hrx calibrate`` (see the module doc). Never leaves a model that failed the gate at
    ``output`` unless ``opts.force``; the caller turns ``not report.passed`` into an exit code."""
    if opts.method is not None:
        check_choice("--method", opts.method, METHODS)
    check_choice("--target", opts.target, TARGETS)
    if opts.eval_tiles < 1:
        raise HRXError(f"--eval-tiles must be at least 1, not {opts.eval_tiles}")
    if opts.max_drop < 0:
        raise HRXError(f"--max-drop must be >= 0 dB, not {opts.max_drop}")
    check_choice("--precision", opts.precision, FLOAT_PRECISIONS)
    model_path = Path(opts.model)
    _, info = check_model(model_path)
    if opts.target == "openvino" and info.ops == "plugin":  # refused before any tile is collected
        from hrx.runtime.openvino import plugin_refusal

        raise HRXError(plugin_refusal(model_path))
    output = Path(opts.output) if opts.output is not None else default_output(model_path)
    if output.resolve() == model_path.resolve():
        raise HRXError(f"{output}: the output would overwrite the FP32 model; pick another -o")
    out_dir = output.parent if str(output.parent) else Path(".")
    if not out_dir.is_dir():
        raise HRXError(f"{output}: output folder {out_dir} does not exist")
    json_path, npz_path = heldout_for(Path(opts.ranges)) if opts.ranges else cache_paths(output)
    model_sha = file_sha256(model_path)
    cache, method, source_kind = _ranges(opts, info, model_sha, json_path, npz_path, log)
    report = CalibrationReport(model_path, output, info, method, opts.target, opts.max_drop, cache, source_kind, json_path,
                               precision=opts.precision)
    report.images = image_count(list(cache.calib_images) + list(cache.held_back_images))
    eval_lr, eval_hr, ladder = cache.eval_lr, cache.eval_hr, LADDER
    if opts.few_image_guard and report.images < FEW_IMAGES:
        report.few_images = True
        report.gate_drop = opts.max_drop / FEW_IMAGE_MARGIN
        ladder = LADDER[1:]  # stem and head float: the rung that held on unseen photos (module doc)
        extra_hr = augment(cache.eval_hr, np.random.default_rng(opts.seed + 1))
        eval_hr = np.concatenate([cache.eval_hr, extra_hr])
        eval_lr = np.concatenate([cache.eval_lr, bicubic_down(extra_hr, info.scale)])
        if log:
            log(f"warning: only {report.images} image{'s' if report.images != 1 else ''}: the quality gate cannot see "
                f"beyond {'them' if report.images != 1 else 'it'}; keeping the stem and head convs float, scoring "
                f"augmented held-back tiles too and asking for a drop <= {report.gate_drop:.2f} dB "
                f"(pass {FEW_IMAGES}+ varied photos for a fuller INT8 model)")
    threshold = report.threshold
    engine = gate_engine(opts.target)
    fp32, fp32_ms = run_model(model_path, eval_lr, info.batch, opts.threads, engine)
    ladder = ladder if opts.fallback else ladder[:1]
    tmp_paths = []
    try:
        for step in ladder:
            tmp = out_dir / f".{output.name}.{step.name}.tmp.onnx"
            tmp_paths.append(tmp)
            if log and report.attempts:
                log(f"drop {report.attempts[-1].quality.drop:+.3f} dB > {threshold:g} dB: trying fallback '{step.name}' ...")
            quant = quantize_qdq(model_path, tmp, cache.ranges, opts.target, step, method)
            if opts.precision != "fp32":
                half_qdq(tmp, opts.precision)
            int8, int8_ms = run_model(tmp, eval_lr, info.batch, opts.threads, engine)
            report.attempts.append(Attempt(quant, compare(fp32, int8, eval_hr, info.scale), fp32_ms, int8_ms))
            if report.attempts[-1].quality.passed(threshold):
                break
        passed = [a for a in report.attempts if a.quality.passed(threshold)]
        report.chosen = passed[0] if passed else min(report.attempts, key=lambda a: a.quality.drop)
        if opts.target == "trt":
            import onnx

            report.trt_problems = trt_problems(onnx.load(str(report.chosen.quant.path), load_external_data=False))
        if passed or opts.force:
            _write(report.chosen, output, _metadata(info, report, report.chosen, model_sha))
            report.written = True
    finally:
        for tmp in tmp_paths:
            if tmp.exists():
                os.unlink(tmp)
    return report
