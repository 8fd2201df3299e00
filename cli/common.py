"""Shared CLI pieces: option types, and turning domain errors into one line + an exit code."""
from __future__ import annotations

import enum
import functools
import os
import sys
import traceback
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


_debug = {"on": False}  # `hrx --debug ...`, set by the root command for this invocation


def set_debug(on: bool) -> None:
    """Turn full tracebacks on or off for errors."""
    _debug["on"] = on


def debug_enabled(flag: bool = False) -> bool:
    """``--debug`` on the command or on ``hrx`` itself, or ``HRX_DEBUG=1`` in the environment."""
    return flag or _debug["on"] or os.environ.get("HRX_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def print_traceback(e: BaseException) -> None:
    """The full chained traceback of ``e`` on stderr, causes hidden by ``raise ... from None`` included."""
    seen: set[int] = set()
    link: BaseException | None = e
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.__suppress_context__ = False
        link = link.__cause__ or link.__context__
    typer.echo("".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip(), err=True)


@functools.lru_cache(maxsize=1)
def _typer_exits() -> tuple[type[BaseException], ...]:
    """The exceptions typer turns into exit codes itself (Exit, Abort, usage errors). Recent typer carries
    its own copy of click and does not install click, so click's classes count only where it is there."""
    kinds: list[type[BaseException]] = [typer.Exit, typer.Abort]
    kinds += [k for k in typer.BadParameter.__mro__ if k.__name__ == "ClickException"]
    try:
        import click
    except ImportError:
        return tuple(kinds)
    return (*kinds, click.exceptions.Exit, click.exceptions.Abort, click.ClickException)


def command_name(fn: Callable[..., Any]) -> str:
    """``hrx triton-repo`` for the command function ``triton_repo``."""
    return "hrx " + fn.__name__.replace("_", "-")


def needs(extra: str, check: bool = True) -> Callable[[F], F]:
    """A command that cannot run without the pip extra ``extra`` (hrx.extras): checked before anything
    else, one line and exit code 2 when it is missing (``hrx export needs PyTorch: pip install 'hrx[export]'``).
    ``check=False``: no check up front (the command checks its inputs first); a module of ``extra`` that
    turns out missing still names ``extra``."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from hrx.extras import require

            if check:
                require(extra, command_name(fn))
            return fn(*args, **kwargs)

        wrapper.hrx_extra = extra  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def handle_errors(fn: F) -> F:
    """Run a command body; every error becomes one line and an exit code: HRXError its own (exit code
    from the error), OS errors ``FILE: reason``, an optional module that is not installed the line that
    names its extra (``hrx export needs PyTorch: pip install 'hrx[export]'``, exit code 2), anything else
    ``Type: message``. With ``--debug`` (a ``debug`` parameter of the command, ``hrx --debug``, or
    ``HRX_DEBUG=1``) the full chained traceback is printed above that line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from hrx.errors import HRXError, one_line

        debug = debug_enabled(bool(kwargs.get("debug")))
        try:
            return fn(*args, **kwargs)
        except _typer_exits():
            raise
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except Exception as e:  # noqa: BLE001 - one line (and the traceback with --debug), never a bare crash
            if debug:
                print_traceback(e)
            if isinstance(e, ImportError):
                from hrx.extras import from_import_error

                missing = from_import_error(e, command_name(fn), getattr(fn, "hrx_extra", None))
                if missing is not None:
                    e = missing
            if isinstance(e, HRXError):
                raise fail(str(e), e.exit_code) from None
            if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
                where = f"{e.filename}: " if getattr(e, "filename", None) else ""
                raise fail(f"{where}{e.strerror or e}") from None
            hint = "" if debug else " (--debug shows the traceback)"
            raise fail(f"{one_line(e)}{hint}") from None

    return wrapper  # type: ignore[return-value]


def is_interactive() -> bool:
    """Whether stderr is a terminal (progress bars are drawn only then)."""
    return sys.stderr.isatty()


B = TypeVar("B", bound="ProgressBars")


class ProgressBars:
    """Rich progress bars on stderr, shown inside a ``with`` block and cleared when it ends. Not ``enabled``
    (quiet, or stderr not a terminal): nothing is drawn, rich is not imported, :meth:`print` writes plain lines.
    Subclasses add their tasks to ``self.bars`` and may name other :meth:`columns`."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        if enabled:
            from rich.console import Console
            from rich.progress import Progress

            self.bars = Progress(*self.columns(), console=Console(stderr=True), transient=True)

    def columns(self) -> list:
        """What is done, the bar, done of total, time taken."""
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

        return [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]

    def __enter__(self: B) -> B:
        if self.enabled:
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.bars.stop()

    def print(self, line: str) -> None:
        """``line`` on stderr as it is (no rich markup), above the bars while they show."""
        if self.enabled:
            self.bars.console.print(line, markup=False, highlight=False)
        else:
            typer.echo(line, err=True)
