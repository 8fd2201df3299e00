"""What this machine offers the TensorRT layer: TensorRT itself, a CUDA GPU, PyTorch CUDA, Triton.

Every check answers ``None`` (usable) or a one-line reason; the ``require_*`` functions turn a
reason into :class:`~hrx.errors.MissingDependencyError` (exit code 2 in the CLI). Nothing here
imports tensorrt, triton or cuda-python at module import.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass
from types import ModuleType

from hrx.errors import MissingDependencyError

INSTALL_HINT = "pip install 'hrx[tensorrt]'"


@dataclass(frozen=True)
class GpuInfo:
    """The CUDA device engines are built for and run on (device 0)."""

    name: str  # "NVIDIA H100 80GB HBM3"
    compute_capability: str  # "9.0"

    @property
    def slug(self) -> str:
        """File-name-safe GPU name: ``nvidia-h100-80gb-hbm3``."""
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-") or "gpu"


def _import_tensorrt() -> ModuleType:
    """Import tensorrt (a seam for tests that simulate a missing or broken install)."""
    return importlib.import_module("tensorrt")


def tensorrt_problem() -> str | None:
    """Why TensorRT cannot be used here, or None."""
    if importlib.util.find_spec("tensorrt") is None:
        return f"TensorRT is not installed (install it with {INSTALL_HINT})"
    try:
        _import_tensorrt()
    except (ImportError, OSError) as e:  # a wheel without its libnvinfer, a CUDA mismatch, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"TensorRT is installed but cannot be loaded ({first}); reinstall it with {INSTALL_HINT}"
    return None


def tensorrt_version() -> str | None:
    """``tensorrt.__version__`` or None when TensorRT is not usable."""
    if tensorrt_problem() is not None:
        return None
    return str(_import_tensorrt().__version__)


def _gpu_from_torch() -> GpuInfo | None:
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return GpuInfo(torch.cuda.get_device_name(0), f"{major}.{minor}")


def _gpu_from_cuda_python() -> GpuInfo | None:
    try:  # cuda-python >= 12.6 moved the bindings; older releases expose cuda.cudart
        from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[import-not-found,no-redef]
        except ImportError:
            return None
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:
        return None
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name.strip("\x00 "), f"{props.major}.{props.minor}")


def gpu_info() -> GpuInfo | None:
    """Device 0 as PyTorch (or, failing that, cuda-python) sees it; None without a usable GPU."""
    for probe in (_gpu_from_torch, _gpu_from_cuda_python):
        try:
            found = probe()
        except Exception:  # noqa: BLE001 - a broken driver raises anything; the answer is "no GPU"
            found = None
        if found is not None:
            return found
    return None


def torch_cuda_problem() -> str | None:
    """Why PyTorch cannot hold CUDA tensors here (the TensorRT backend's buffers), or None."""
    import torch

    if torch.version.cuda is None:
        return f"PyTorch {torch.__version__} is a CPU-only build (install a CUDA build of PyTorch)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible (check the NVIDIA driver and CUDA_VISIBLE_DEVICES)"
    return None


def gpu_problem() -> str | None:
    """Why there is no CUDA GPU to build or run engines on, or None."""
    if gpu_info() is not None:
        return None
    reason = torch_cuda_problem()
    return reason or "no CUDA GPU is visible"


def triton_problem() -> str | None:
    """Why the plugin kernels (Triton) cannot run here, or None."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (it ships with CUDA builds of PyTorch; pip install triton)"
    return torch_cuda_problem()


def missing_for_tensorrt(need_gpu: bool = True) -> str | None:
    """One line naming everything the TensorRT path lacks here, or None."""
    problems = [p for p in (tensorrt_problem(), gpu_problem() if need_gpu else None) if p]
    if not problems:
        return None
    return "; ".join(problems)


def require_tensorrt(need_gpu: bool = True, what: str = "the TensorRT backend") -> ModuleType:
    """Import and return tensorrt, or raise MissingDependencyError with one line."""
    reason = missing_for_tensorrt(need_gpu)
    if reason is not None:
        raise MissingDependencyError(f"{what} is unavailable: {reason}")
    return _import_tensorrt()


def require_gpu(what: str = "the TensorRT backend") -> GpuInfo:
    """The CUDA GPU's description; MissingDependencyError with one line when there is none."""
    info = gpu_info()
    if info is None:
        raise MissingDependencyError(f"{what} is unavailable: {gpu_problem()}")
    return info


def require_torch_cuda(what: str = "the TensorRT backend") -> None:
    """Raise MissingDependencyError with one line unless PyTorch sees a CUDA device."""
    reason = torch_cuda_problem()
    if reason is not None:
        raise MissingDependencyError(f"{what} needs PyTorch with CUDA: {reason}")
