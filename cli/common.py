"""Shared CLI pieces: option types, and turning domain errors into one line + an exit code."""
from __future__ import annotations

import enum
import functools
import sys
from typing import Annotated, Any, Callable, Iterable, TypeVar

import typer

F = TypeVar("F", bound=Callable[..., Any])

Checkpoint = Annotated[str, typer.Argument(help="Checkpoint file (.pt / .safetensors; third-party .pth / .pt / .ckpt / .safetensors via spandrel) or a bundled model name (see `hrx models`).",
                                           show_default=False)]
Seed = Annotated[int, typer.Option("--seed", help="Random seed of everything random in the command (initialisation, "
                                                "data split, crops, test inputs): the same seed gives the same result.")]


def choices(name: str, values: Iterable[str]) -> type[enum.Enum]:
    """A typer choice type built from the library's own tuple of values, so the CLI and the code
    that checks them never drift (``onnxrt-cpu`` is the member ``onnxrt_cpu``)."""
    return enum.Enum(name, {v.replace("-", "_"): v for v in values}, type=str)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on one line to stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Run a command body; HRXError (and a few plain OS errors) become one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from hrx.errors import HRXError

        try:
            return fn(*args, **kwargs)
        except HRXError as e:
            raise fail(str(e), e.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            raise fail(f"{where}{e.strerror or e}") from None

    return wrapper  # type: ignore[return-value]


def is_interactive() -> bool:
    return sys.stderr.isatty()
