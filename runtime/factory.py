"""Pick and open a backend from what the user passed: an engine file (``.onnx``, ``.engine`` / ``.plan``)
or a checkpoint, and ``--backend``.

``auto``: ``.onnx`` -> ONNX Runtime CUDA when onnxruntime-gpu can start CUDA here, else ONNX Runtime CPU
(``--backend trt`` with an ``.onnx`` builds a TensorRT engine into the user cache on first use: minutes, so
``auto`` never does it unasked); ``.engine`` / ``.plan`` -> TensorRT; a checkpoint -> PyTorch (CUDA when
available).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hrx.errors import HRXError, MissingDependencyError
from hrx.runtime.backend import Backend

BACKENDS = ("auto", "onnxrt-cpu", "onnxrt-cuda", "trt", "torch")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan")


@dataclass(frozen=True)
class BackendRequest:
    engine: Path | None = None  # .onnx / .engine / .plan
    model: str | None = None  # checkpoint path or bundled name (PyTorch)
    backend: str = "auto"
    tile: int | None = None  # PyTorch only: engines have a static tile
    batch: int | None = None  # PyTorch only
    threads: int = 0  # ONNX Runtime intra-op threads (0: its default)
    log: Callable[[str], None] | None = None  # progress lines of slow steps (TensorRT engine build)


def open_backend(request: BackendRequest) -> Backend:
    """Open the backend ``request`` asks for; raises :class:`HRXError` for combinations that cannot work."""
    if request.backend not in BACKENDS:
        raise HRXError(f"unknown backend {request.backend!r}; choose from {', '.join(BACKENDS)}")
    if request.engine is None and request.model is None:
        raise HRXError("no model given: pass --engine MODEL.onnx or --model CHECKPOINT")
    if request.engine is not None and request.model is not None:
        raise HRXError("pass either --engine or --model, not both")
    if request.model is not None:
        return _open_checkpoint(request)
    engine = Path(request.engine)
    if not engine.is_file():
        raise HRXError(f"{engine}: no such engine file")
    if request.tile is not None or request.batch is not None:
        raise HRXError(f"{engine}: --tile and --batch apply to --model only; an engine file has a static tile "
                       "and batch (re-export it to change them)")
    suffix = engine.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return _open_onnx(engine, request)
    if suffix in ENGINE_SUFFIXES:
        if request.backend not in ("auto", "trt"):
            raise HRXError(f"{engine}: a TensorRT engine runs only with --backend trt (or auto)")
        return _open_tensorrt(engine)
    raise HRXError(f"{engine}: unknown engine type {suffix or '(no suffix)'}; expected .onnx, .engine or .plan")


def _open_onnx(path: Path, request: BackendRequest) -> Backend:
    from hrx.runtime.onnxrt import OnnxRuntimeBackend, cuda_available

    if request.backend == "torch":
        raise HRXError(f"{path}: --backend torch cannot run an ONNX file; pass the checkpoint with --model")
    if request.backend == "trt":  # builds the engine into the user cache on first use (minutes), then reuses it
        return _open_tensorrt(path, from_onnx=True, log=request.log)
    if request.backend == "onnxrt-cuda":
        return OnnxRuntimeBackend(path, "cuda", request.threads)
    if request.backend == "auto" and cuda_available():
        try:
            return OnnxRuntimeBackend(path, "cuda", request.threads)
        except MissingDependencyError:  # the CUDA provider is installed but cannot start: CPU it is
            pass
    return OnnxRuntimeBackend(path, "cpu", request.threads)


def _open_tensorrt(path: Path, from_onnx: bool = False, log: Callable[[str], None] | None = None) -> Backend:
    try:
        from hrx.runtime.trt.backend import TensorRTBackend
    except ImportError as e:  # the backend raises MissingDependencyError itself when tensorrt is missing
        raise MissingDependencyError(f"{path}: the TensorRT backend is not available here ({e})") from None
    if from_onnx:
        return TensorRTBackend.from_onnx(path, log=log)
    return TensorRTBackend(path, log=log)


def _open_checkpoint(request: BackendRequest) -> Backend:
    from hrx.checkpoint import resolve_checkpoint
    from hrx.runtime.torch_backend import DEFAULT_TILE, TorchBackend

    if request.backend not in ("auto", "torch"):
        raise HRXError(f"--backend {request.backend} needs an engine file; export the checkpoint with `hrx export` "
                       "and pass it with --engine")
    path = resolve_checkpoint(request.model)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return TorchBackend(os.fspath(path), tile=request.tile or DEFAULT_TILE, batch=request.batch or 1, device=device)
