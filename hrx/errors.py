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
