"""``hrx calibrate``: FP32 ONNX + a folder of images -> INT8 QDQ ONNX (TensorRT / ONNX Runtime / OpenVINO) behind a quality gate."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from hrx.cli.common import Seed, choices, fail, handle_errors, needs
from hrx.export.onnx_tools import FLOAT_PRECISIONS


class Method(str, Enum):
    entropy = "entropy"
    percentile = "percentile"
    minmax = "minmax"


Precision = choices("Precision", FLOAT_PRECISIONS)


class Target(str, Enum):
    trt = "trt"
    cpu = "cpu"
    openvino = "openvino"


@handle_errors
@needs("calibrate")
def calibrate(
    model: Annotated[Path, typer.Argument(help="FP32 ONNX file from `hrx export` (native or plugin ops).", show_default=False)],
    images: Annotated[Optional[Path], typer.Option("--images", "-i", help="Folder of images like the ones you will upscale. "
                                                   "Optional when the ranges cache next to the output exists.")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="QDQ model to write (default: MODEL stem + .int8.onnx).")] = None,
    method: Annotated[Optional[Method], typer.Option("--method", help="Range calibration (ONNX Runtime's calibrators); "
                                                     "default: percentile, or the cached method without --images.")] = None,
    target: Annotated[Target, typer.Option("--target", help="trt: symmetric S8S8 Q/DQ for TensorRT. cpu: U8S8 for ONNX Runtime on x86. "
                                                   "openvino: U8S8 for OpenVINO's CPU plugin (the gate runs on OpenVINO).")] = Target.trt,
    samples: Annotated[int, typer.Option("--samples", min=1, help="Random calibration crops of the model's tile size.")] = 32,
    eval_tiles: Annotated[int, typer.Option("--eval-tiles", min=1, help="Held-back tiles for the quality gate.")] = 16,
    max_drop: Annotated[float, typer.Option("--max-drop", min=0.0, help="Largest allowed PSNR drop of INT8 vs FP32 (dB).")] = 0.3,
    force: Annotated[bool, typer.Option("--force", help="Write the model (the attempt with the smallest drop) even when it fails the gate.")] = False,
    no_fallback: Annotated[bool, typer.Option("--no-fallback", help="Do not retry with more layers in float when the gate fails.")] = False,
    ranges: Annotated[Optional[Path], typer.Option("--ranges", help="Ranges cache to read / write (default: OUTPUT stem + .ranges.json, next to it).")] = None,
    precision: Annotated[Precision, typer.Option("--precision", help="Outside the INT8 convs: fp32, or fp16/bf16 with "
                                                 "the FP32 islands of `hrx export --precision` (what a strongly "
                                                 "typed INT8 TensorRT engine needs for FP16 elsewhere).")] = Precision.fp32,
    seed: Seed = 0,
    threads: Annotated[int, typer.Option("--threads", min=0, help="Threads of the gate's engine (ONNX Runtime, or OpenVINO for --target openvino; 0: one per core).")] = 0,
) -> None:
    """Quantize an exported model to INT8 with explicit Q/DQ nodes, calibrated on real image tiles.

    Numerically sensitive parts stay float: the MoE router and ArgMax, the scan's Exp / CumSum, softmax inputs, the last convs.

    Held-back tiles are upscaled with FP32 and INT8 and their PSNRs compared; a drop over --max-drop tries the fallbacks (more layers float), then exits 1 without writing, unless --force.

    Example: hrx calibrate model.onnx --images photos/ --target trt
    """
    from hrx.calibration.pipeline import CalibrateOptions, calibrate as run
    from hrx.calibration.report import summary_lines

    report = run(CalibrateOptions(model=model, output=output, images=images, method=method.value if method else None,
                                  target=target.value, samples=samples, eval_tiles=eval_tiles, max_drop=max_drop,
                                  force=force, fallback=not no_fallback, seed=seed, ranges=ranges, threads=threads,
                                  precision=precision.value),
                 log=lambda line: typer.echo(line, err=True))
    for line in summary_lines(report):
        typer.echo(line)
    if report.passed:
        return
    tried = ", ".join(f"{a.quant.step.name} {a.quality.drop:+.3f} dB" for a in report.attempts)
    limit = f"--max-drop {max_drop:g} dB" + (f" / 3 = {report.threshold:.2f} dB (few images)" if report.few_images else "")
    message = f"{model}: INT8 PSNR drop over {limit} (tried {tried})"
    if not report.written:
        raise fail(f"{message}; nothing written (--force writes it anyway)")
    typer.echo(f"warning: {message}; written anyway (--force)", err=True)
