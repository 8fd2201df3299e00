"""Errors that the CLI turns into one line and an exit code (no traceback)."""
from __future__ import annotations

from typing import Collection


class HRXError(Exception):
    """A user-facing error: the message is one line that says what is wrong and what to do."""

    exit_code = 1


class CheckpointError(HRXError):
    pass


class MissingDependencyError(HRXError):
    """An optional backend (TensorRT, CUDA, ...) is not installed or not usable here."""

    exit_code = 2


class BackendDown(HRXError):
    """The backend can run no more images (a server that stopped answering): the images not yet run fail
    at once instead of one timeout each."""

    exit_code = 2


class OutputBusy(HRXError):
    """Another run holds the lock of the output this run was about to write (:func:`hrx.paths.hold_lock`):
    the output is left to that run, and this run counts it as failed."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (just ``Type`` when the message is empty), at most ``limit``
    characters: how an exception that is not an :class:`HRXError` is shown on one line."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0].strip()}" if lines else type(e).__name__
    return text[:limit]


def check_choice(option: str, value: object, choices: Collection[str]) -> None:
    """One-line error unless ``value`` is one of ``choices``: ``--precision must be one of fp32, fp16, bf16,
    not 'fp8'``."""
    if value not in choices:
        raise HRXError(f"{option} must be one of {', '.join(choices)}, not {value!r}")
