"""``hrx export``: checkpoint -> fused, static-shape, simplified ONNX."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from hrx.cli.common import Checkpoint, choices, handle_errors, needs
from hrx.export.onnx_tools import FLOAT_PRECISIONS, GRAPH_TARGETS, IO_PRECISIONS


Precision = choices("Precision", FLOAT_PRECISIONS)
IOPrecision = choices("IOPrecision", IO_PRECISIONS)
Target = choices("Target", GRAPH_TARGETS)


class OpsMode(str, Enum):
    native = "native"
    plugin = "plugin"


@handle_errors
@needs("export")
def export(
    checkpoint: Checkpoint,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="ONNX file to write [default: CHECKPOINT stem + .onnx].")] = None,
    tile: Annotated[int, typer.Option("--tile", help="Static input side in pixels; a multiple of the model's size_multiple.")] = 256,
    batch: Annotated[str, typer.Option("--batch", help="Static batch size (tiles per inference), or 'dynamic': a "
                                                       "symbolic batch axis (tile stays static) for Triton's "
                                                       "dynamic batcher and `hrx triton-repo`.")] = "1",
    ops: Annotated[OpsMode, typer.Option("--ops", help="native: standard ONNX ops only. plugin: hrx::SelectiveScan / "
                                                     "hrx::MoETop1 nodes for TensorRT plugins (still runs on ONNX Runtime).")] = OpsMode.native,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset (18 or newer).")] = 18,
    no_simplify: Annotated[bool, typer.Option("--no-simplify", help="Skip onnxsim/onnxslim.")] = False,
    precision: Annotated[Precision, typer.Option("--precision", help="Compute precision written into the graph: "
                                                 "fp16/bf16 run every op in half except FP32 islands (softmax and "
                                                 "its logits, norm statistics, the scan's decays), made explicit "
                                                 "with Cast nodes; TensorRT builds it strongly typed as is.")] = Precision.fp32,
    io: Annotated[IOPrecision, typer.Option("--io", help="Input/output type of an fp16 graph: fp32 (default: "
                                            "nothing changes for callers) or fp16 (for callers that feed half "
                                            "tensors).")] = IOPrecision.fp32,
    no_passes: Annotated[bool, typer.Option("--no-passes", help="Skip the graph passes for the CPU engines "
                                                               "(channel LayerNorms, flips, transposes merged or "
                                                               "cancelled, GELU as one kernel).")] = False,
    target: Annotated[Optional[Target], typer.Option("--target", help="The engine the graph passes choose formulations "
                                                     "for (recorded as graph_target): openvino (channel LayerNorms and flips in "
                                                     "the forms OpenVINO's CPU plugin prefers; --ops native only) or "
                                                     "onnxruntime. Default: openvino for an FP32 file of native ops with a "
                                                     "static batch (the default CPU engine), onnxruntime for --ops plugin, "
                                                     "fp16 / bf16 files (GPU engines) and --batch dynamic (servers). "
                                                     "Either file runs on both engines.",
                                                     show_default=False)] = None,
) -> None:
    """Fuse a checkpoint's re-parameterizable branches, freeze it to static shapes with top-1
    routing, export to ONNX, check and simplify it. Writes the model's metadata (scale, tile,
    overlap, ...) into the file so `hrx upscale` needs nothing else."""
    from hrx.export.onnx_export import export_onnx

    if output is None:
        output = Path(Path(checkpoint).name.split(".")[0] + ".onnx")
    result = export_onnx(checkpoint, output, tile=tile, batch=batch, ops=ops.value, opset=opset,
                         simplify_graph=not no_simplify, precision=precision.value, io=io.value,
                         graph_passes=not no_passes, target=target.value if target else None)
    typer.echo(result.summary())
