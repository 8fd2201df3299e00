"""``hrx verify``: compare deployed forms against the PyTorch training model (Polygraphy)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from hrx.cli.common import Seed, handle_errors, needs


def _openvino_runners(path: Path, info) -> list:
    from hrx.runtime.openvino import polygraphy_runner

    return [polygraphy_runner(path)]


def _trt_runners(path: Path, info) -> list:
    from hrx.runtime.trt import polygraphy_runner

    return [polygraphy_runner(path, info.precision)]


@handle_errors
@needs("export")
def verify(
    model: Annotated[Path, typer.Argument(help="ONNX file from `hrx export` (or `hrx calibrate`).", show_default=False)],
    checkpoint: Annotated[str, typer.Option("--checkpoint", "-c", help="Checkpoint (or bundled name) the model was exported from.",
                                            show_default=False)],
    backends: Annotated[Optional[str], typer.Option("--backends", help="Comma-separated: onnxrt, openvino (pinned to f32), trt, fp16-ref (the "
                                                    "graph on the CPU with every op rounded to its FP16/BF16 type; "
                                                    "slow, use small tiles); upscale:onnxrt-cpu, upscale:onnxrt-cuda, "
                                                    "upscale:openvino (f32), upscale:trt (the file's own precision): "
                                                    "the backend `hrx upscale --backend NAME` opens. Default: onnxrt, "
                                                    "plus trt when TensorRT is installed.")] = None,
    atol: Annotated[Optional[float], typer.Option("--atol", help="Absolute tolerance [default: 1e-4; 1e-2 for fp16 "
                                                  "models, 6e-2 for bf16].", show_default=False)] = None,
    rtol: Annotated[Optional[float], typer.Option("--rtol", help="Relative tolerance [default: 1e-3; 1e-2 for fp16 "
                                                  "models, 6e-2 for bf16].", show_default=False)] = None,
    images: Annotated[Optional[Path], typer.Option("--images", help="Folder of images: real tiles are compared too.")] = None,
    seed: Seed = 0,
    bisect: Annotated[bool, typer.Option("--bisect", help="On failure, name the first module/node that diverges.")] = False,
    html: Annotated[Optional[Path], typer.Option("--html", help="Also write the comparison as a page that opens from "
                                                 "disk: per tile and backend the outputs, an error map, PSNR, a "
                                                 "histogram and the worst region zoomed (docs/reports.md).",
                                                 show_default=False)] = None,
) -> None:
    """Run the ONNX model on ONNX Runtime (and TensorRT) and the unfused PyTorch model on the same
    inputs; print max abs/rel error and PSNR per backend, PASS/FAIL; exit 1 on FAIL."""
    from hrx.export.compare import verify as run_verify
    from hrx.runtime.verify_runner import runner_factories

    if html is not None:  # before any work
        from hrx.pages import check_page_path

        check_page_path(html)
    if backends is None:
        from hrx.runtime.trt.env import tensorrt_problem

        chosen = ["onnxrt"] + (["trt"] if tensorrt_problem() is None else [])
    else:
        chosen = [b.strip() for b in backends.split(",") if b.strip()]
    report = run_verify(model, checkpoint, chosen, atol=atol, rtol=rtol, images=images, seed=seed, bisect=bisect,
                        runners={"trt": _trt_runners, "openvino": _openvino_runners, **runner_factories()},
                        keep_outputs=html is not None)
    typer.echo(f"verify {model} against {checkpoint} (unfused PyTorch), {report.inputs} input batches, "
               f"atol={report.atol:g} rtol={report.rtol:g}")
    for r in report.reports:
        typer.echo("  " + r.line())
    if report.bisect:
        typer.echo(f"  bisect: {report.bisect}")
    if html is not None:
        from hrx.export.verify_page import verify_page
        from hrx.pages import write_page

        typer.echo(f"  page: {write_page(html, verify_page(report, checkpoint))}")
    if not report.passed:
        failed = ", ".join(r.backend for r in report.reports if not r.passed)
        typer.echo(f"error: FAIL: output 'output' of {model} differs from PyTorch on {failed}", err=True)
        raise typer.Exit(1)
    typer.echo("PASS")
