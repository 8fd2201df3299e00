"""Errors that the CLI turns into one line and an exit code (no traceback)."""
from __future__ import annotations


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


def one_line(e: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` (just ``Type`` when the message is empty), at most ``limit``
    characters: how an exception that is not an :class:`HRXError` is shown on one line."""
    lines = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {lines[0].strip()}" if lines else type(e).__name__
    return text[:limit]
