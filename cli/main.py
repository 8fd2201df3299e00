"""Entry point of the ``hrx`` command: wires the command modules, nothing else."""
from __future__ import annotations

import typer

from hrx import __version__
from hrx.cli.common import set_debug
from hrx.cli import build as _build
from hrx.cli import calibrate as _calibrate
from hrx.cli import export as _export
from hrx.cli import models as _models
from hrx.cli import new as _new
from hrx.cli import upscale as _upscale
from hrx.cli import train as _train
from hrx.cli import triton_repo as _triton_repo
from hrx.cli import verify as _verify

app = typer.Typer(
    name="hrx",
    help="HARMONIC-RX: restoration / super-resolution from checkpoint to ONNX to engine to image.\n\n"
         "Typical flow: hrx new or hrx train, then hrx export, hrx verify, optionally hrx calibrate (INT8) and hrx build (TensorRT), then hrx upscale.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command("new")(_new.new)
app.command("models")(_models.models)
app.command("upscale")(_upscale.upscale)
app.command("build")(_build.build)
app.command("export")(_export.export)
app.command("verify")(_verify.verify)
app.command("calibrate")(_calibrate.calibrate)
app.command("train")(_train.train)
app.command("triton-repo")(_triton_repo.triton_repo)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hrx {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit."),
          debug: bool = typer.Option(False, "--debug", help="Print the full chained traceback of an error "
                                     "(also HRX_DEBUG=1); without it errors are one line.")) -> None:
    set_debug(debug)


def main() -> None:
    """The ``hrx`` console entry point."""
    app()


if __name__ == "__main__":
    main()
