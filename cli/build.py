"""``hrx build``: a TensorRT engine from an exported ONNX model."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from hrx.cli.common import handle_errors, needs


class PluginImpl(str, Enum):
    jit = "jit"
    aot = "aot"


@handle_errors
@needs("tensorrt", check=False)
def build(
    model: Annotated[Path, typer.Argument(help="ONNX file from `hrx export` (or a Q/DQ model from `hrx calibrate`).",
                                          show_default=False)],
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="Engine file to write \\[default: MODEL.engine beside the ONNX file]. "
                               "Its build record goes beside it as ENGINE.json.", show_default=False)] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP32 model: convert it to FP16 with FP32 islands (softmax "
                                                      "and its logits, norm statistics, the scan's decays) as "
                                                      "`hrx export --precision fp16` does, then build. An FP16 "
                                                      "export builds as it is.")] = False,
    bf16: Annotated[bool, typer.Option("--bf16", help="As --fp16 with BF16 (graph opset 22 or newer).")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Require a Q/DQ model from `hrx calibrate`: INT8 with its "
                                                      "explicit scales. A Q/DQ model builds as INT8 without this "
                                                      "flag too.")] = False,
    best: Annotated[bool, typer.Option("--best", hidden=True, help="Removed: TensorRT builds strongly typed.")] = False,
    workspace: Annotated[Optional[float], typer.Option(
        "--workspace", metavar="GB", min=0.0, help="Limit the builder's scratch memory to GB gibibytes "
                                                   "\\[default: TensorRT's, up to the whole GPU].",
        show_default=False)] = None,
    timing_cache: Annotated[Optional[Path], typer.Option(
        "--timing-cache", metavar="PATH", help="Reuse kernel timings from PATH and write them back: "
                                               "rebuilds on the same GPU get much faster.",
        show_default=False)] = None,
    plugins: Annotated[Optional[bool], typer.Option(
        "--plugins/--no-plugins", help="For `hrx export --ops plugin` models: run hrx::SelectiveScan and "
                                       "hrx::MoETop1 as TensorRT plugins (Triton kernels, the default) or build "
                                       "their standard-op decomposition.", show_default=False)] = None,
    plugin_impl: Annotated[PluginImpl, typer.Option(
        "--plugin-impl", help="jit: plugin kernels run through Python and Triton at inference time; "
                              "aot: compiled to PTX inside the engine (TensorRT >= 10.9, no Python needed "
                              "to run it).")] = PluginImpl.jit,
    batch_profile: Annotated[Optional[str], typer.Option(
        "--batch-profile", metavar="MIN,OPT,MAX", help="Optimisation profile of the batch axis for a "
                                                       "`hrx export --batch dynamic` model \\[default: 1,8,32 "
                                                       "within the export's max_batch].", show_default=False)] = None,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Show TensorRT's warnings.")] = False,
) -> None:
    """Build a strongly typed TensorRT engine from an exported ONNX model: every tensor's type
    comes from the graph (its Casts and Q/DQ nodes); TensorRT 10.12+ and 11.x.

    Needs TensorRT (pip install 'hrx\\[tensorrt]') and an NVIDIA GPU.

    Writes ENGINE and its build record ENGINE.json (ONNX sha256, TensorRT version, GPU, precision, shapes).

    `hrx upscale --engine ENGINE` checks the record and says how to rebuild on a mismatch.

    Prints the layer precision counts and the build time.
    """
    from hrx.errors import HRXError
    from hrx.runtime.trt.builder import BuildOptions, build_engine

    if best:
        raise HRXError("--best was removed: TensorRT builds strongly typed (TensorRT 11 has no per-layer precision "
                       "choice); use --fp16, --bf16 or a Q/DQ model from `hrx calibrate`")

    def say(message: str) -> None:
        typer.echo(message, err=True)

    options = BuildOptions(fp16=fp16, bf16=bf16, int8=int8, workspace_gb=workspace, timing_cache=timing_cache,
                           plugins=plugins, plugin_impl=plugin_impl.value, verbose=verbose,
                           batch_profile=_parse_profile(batch_profile))
    report = build_engine(model, output, options, log=say)
    for line in report.summary_lines():
        typer.echo(line)


def _parse_profile(text: str | None) -> tuple[int, int, int] | None:
    """``MIN,OPT,MAX`` -> three ints (range checks are the builder's)."""
    if text is None:
        return None
    from hrx.errors import HRXError

    parts = text.replace(" ", "").split(",")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise HRXError(f"--batch-profile {text!r}: expected MIN,OPT,MAX, e.g. 1,8,32")
    low, opt, high = (int(p) for p in parts)
    return low, opt, high
