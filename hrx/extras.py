"""The optional parts of HRX (pip extras, see ``pyproject.toml`` and docs/install.md) and the one-line
error that names the extra to install when a command needs one that is missing.

The base install (``pip install hrx``) runs ``hrx upscale`` on ONNX files and on the bundled models; a
command that needs more says so: ``hrx export needs PyTorch: pip install 'hrx[export]'`` (exit code 2).
"""
from __future__ import annotations

import importlib.util

from hrx.errors import MissingDependencyError

# extra -> the modules a command of that extra imports, checked in this order
EXTRAS: dict[str, tuple[str, ...]] = {
    "export": ("torch", "onnx", "onnxscript", "safetensors"),
    "train": ("torch", "safetensors", "skimage"),
    "calibrate": ("torch", "onnx", "skimage"),
    "data": ("skimage",),
    "spandrel": ("torch", "spandrel"),
    "tensorrt": ("tensorrt", "onnx", "torch", "polygraphy"),
    "ray": ("ray",),
    "triton": ("tritonclient", "onnx"),
    "video": ("av",),
}

# module -> the extra that brings it, when the command that imported it names no extra of its own
MODULE_EXTRAS: dict[str, str] = {
    "torch": "export", "onnx": "export", "onnxscript": "export", "onnxsim": "export", "onnxslim": "export",
    "polygraphy": "export", "onnxconverter_common": "export", "safetensors": "export", "skimage": "data",
    "spandrel": "spandrel", "einops": "spandrel", "tensorrt": "tensorrt", "ray": "ray",
    "tritonclient": "triton", "av": "video",
}

# module -> how the error names it
NAMES: dict[str, str] = {
    "torch": "PyTorch", "onnx": "onnx", "onnxscript": "onnxscript", "onnxsim": "onnxsim", "onnxslim": "onnxslim",
    "polygraphy": "Polygraphy", "onnxconverter_common": "onnxconverter-common", "safetensors": "safetensors",
    "skimage": "scikit-image", "spandrel": "spandrel", "einops": "einops", "tensorrt": "TensorRT",
    "ray": "Ray Data", "tritonclient": "the Triton client", "av": "PyAV",
}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (found, not imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_error(what: str, module: str, extra: str | None = None) -> MissingDependencyError:
    """``{what} needs {module's name}: pip install 'hrx[{extra}]'``; ``extra`` defaults to the one that
    brings ``module``."""
    extra = extra or MODULE_EXTRAS.get(module, "test")
    return MissingDependencyError(f"{what} needs {NAMES.get(module, module)}: pip install 'hrx[{extra}]'")


def require(extra: str, what: str) -> None:
    """Raise :class:`MissingDependencyError` naming ``extra`` when a module it brings is not installed."""
    for module in EXTRAS[extra]:
        if not installed(module):
            raise missing_error(what, module, extra)


def from_import_error(error: ImportError, what: str, extra: str | None = None) -> MissingDependencyError | None:
    """The one-line error for an ``import`` of an optional module that failed, or None when the missing
    module is not one an extra brings (a real bug, which should not be hidden)."""
    name = getattr(error, "name", None) or ""
    module = name.split(".")[0]
    if not isinstance(error, ModuleNotFoundError) or module not in MODULE_EXTRAS:
        return None
    if extra is not None and module not in EXTRAS.get(extra, ()):
        extra = None
    return missing_error(what, module, extra)
