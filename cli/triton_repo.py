"""``hrx triton-repo``: a Triton Inference Server model repository for an exported model or engine."""
from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from hrx.cli.common import handle_errors, needs


class KindChoice(str, Enum):
    auto = "auto"
    gpu = "gpu"
    cpu = "cpu"


@handle_errors
@needs("triton", check=False)
def triton_repo(
    model: Annotated[Path, typer.Argument(help="An .onnx from `hrx export` (served by Triton's onnxruntime backend) "
                                               "or an .engine / .plan from `hrx build` (tensorrt backend).",
                                          show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model repository folder (created; other models in "
                                                                "it are kept).", show_default=False)],
    name: Annotated[Optional[str], typer.Option("--name", help="Model name on the server [default: MODEL's stem].",
                                                show_default=False)] = None,
    instances: Annotated[int, typer.Option("--instances", min=1, help="Model instances (instance_group count).")] = 1,
    kind: Annotated[KindChoice, typer.Option("--kind", help="Where instances run: auto (Triton picks; engines: gpu), "
                                                            "gpu or cpu.")] = KindChoice.auto,
) -> None:
    """Write OUTPUT/NAME/config.pbtxt and OUTPUT/NAME/1/model.onnx|model.plan for Triton Inference Server.

    Names, dtypes and dims come from the graph; a `hrx export --batch dynamic` model gets max_batch_size and
    dynamic_batching; HRX's metadata (scale, tile, overlap, ...) goes under parameters so that
    `hrx upscale --backend triton` can tile with nothing but the server.

    Example: hrx triton-repo model.onnx -o repo/ --name hrx --instances 2
    """
    from hrx.runtime.inference_server_repo import write_repository

    kinds = {"auto": "", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}
    folder = write_repository(model, output, name, instances, kinds[kind.value])
    typer.echo(f"wrote {folder / 'config.pbtxt'} and {folder / '1'}; serve it with: "
               f"tritonserver --model-repository {output}")
