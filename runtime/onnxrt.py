"""ONNX Runtime backends: CPU, and CUDA with IO binding (the output stays bound on the device).

``create_session`` is the one place where sessions are made, for the runtime and for ``hrx verify``:
``--ops plugin`` files carry ``hrx::`` custom ops as ONNX local functions, which ONNX Runtime inlines
by itself, so nothing needs registering here.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hrx.errors import HRXError, MissingDependencyError
from hrx.interface import Backend, ModelInfo

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def cuda_available() -> bool:
    """Whether this onnxruntime build has the CUDA provider (onnxruntime-gpu). A build without the provider's
    library (the CPU wheel, or no onnxruntime) answers without importing onnxruntime, a few hundred ms that
    an OpenVINO run does not need."""
    if not _cuda_provider_library():
        return False
    import onnxruntime as ort

    return CUDA in ort.get_available_providers()


def _cuda_provider_library() -> bool:
    """Whether the installed onnxruntime ships ``onnxruntime_providers_cuda`` (found without importing it)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("onnxruntime")
    except (ImportError, ValueError):
        return False
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        capi = Path(folder) / "capi"
        if any(capi.glob("*onnxruntime_providers_cuda*")):
            return True
    return False


def create_session(path: str | os.PathLike, providers: Sequence[Any] | None = None, *,
                   threads: int = 0) -> "onnxruntime.InferenceSession":  # noqa: F821
    """An ``onnxruntime.InferenceSession`` for ``path`` with full graph optimisation.

    ``providers`` default: CUDA then CPU when this onnxruntime has CUDA, else CPU. ``threads``: intra-op
    threads (0: onnxruntime's default, one per physical core).
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise HRXError(f"{path}: no such ONNX file")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: no provider-fallback chatter on stderr
    if threads:
        options.intra_op_num_threads = threads
    if providers is None:
        providers = [CUDA, CPU] if cuda_available() else [CPU]
    try:
        return ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail / InvalidGraph / ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HRXError(f"{path}: onnxruntime cannot load it ({reason[:300]})") from None


class OnnxRuntimeBackend(Backend):
    """Runs an HRX ONNX export (static input ``[batch, C, tile, tile]``) on ONNX Runtime. Thread-safe: on the
    CPU ``session.run`` is; on CUDA the one IoBinding and its device output buffer are used under a lock."""

    thread_safe = True

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int = 0, device_id: int = 0) -> None:
        import onnxruntime as ort

        if device not in ("cpu", "cuda"):
            raise HRXError(f"unknown onnxruntime device {device!r} (cpu or cuda)")
        if device == "cuda" and not cuda_available():
            raise MissingDependencyError("ONNX Runtime CUDA is not available here (install onnxruntime-gpu "
                                         "and a CUDA runtime), or use --backend onnxrt-cpu")
        self.path = Path(path)
        self.info = ModelInfo.from_onnx(self.path)
        providers = [(CUDA, {"device_id": device_id}), CPU] if device == "cuda" else [CPU]
        self.session = create_session(self.path, providers, threads=threads)
        self.device_id = device_id
        if device == "cuda" and self.session.get_providers()[0] != CUDA:
            raise MissingDependencyError(f"{self.path}: ONNX Runtime could not start CUDA (libraries missing?); "
                                         "use --backend onnxrt-cpu")
        self.device = device
        self.name = f"onnxrt-{device}"
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self._input, self._output = inp.name, out.name
        self._dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        i = self.info
        self.input_shape = (i.batch, i.in_channels, i.tile, i.tile)
        self.output_shape = (i.batch, i.out_channels, i.tile * i.scale, i.tile * i.scale)
        declared = tuple(d if isinstance(d, int) else -1 for d in inp.shape)
        if len(declared) != 4 or any(d not in (-1, e) for d, e in zip(declared, self.input_shape)):
            raise HRXError(f"{self.path}: input {inp.name} has shape {inp.shape}, but the metadata says "
                           f"{list(self.input_shape)}")
        self._binding = None
        self._bound = threading.Lock()
        if device == "cuda":
            self._binding = self.session.io_binding()
            out_type = np.float16 if out.type == "tensor(float16)" else np.float32
            self._device_out = ort.OrtValue.ortvalue_from_shape_and_type(self.output_shape, out_type, "cuda",
                                                                         device_id)
            self._binding.bind_ortvalue_output(self._output, self._device_out)

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        """Run one batch of tiles (shape checked against the model's)."""
        if tuple(tiles.shape) != self.input_shape:
            raise HRXError(f"{self.path}: expected tiles of shape {list(self.input_shape)}, got {list(tiles.shape)}")
        tiles = np.ascontiguousarray(tiles, dtype=self._dtype)
        if self._binding is None:
            out = self.session.run([self._output], {self._input: tiles})[0]
        else:
            import onnxruntime as ort

            value = ort.OrtValue.ortvalue_from_numpy(tiles, "cuda", self.device_id)
            with self._bound:  # one binding, one output buffer: bind, run and copy out as one step
                self._binding.bind_ortvalue_input(self._input, value)
                self.session.run_with_iobinding(self._binding)
                out = self._device_out.numpy()
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        """Drop the session; idempotent."""
        self._binding = None
        self.session = None
