"""The TensorRT layer: ``hrx build``, the engine cache, the ``hrx::`` plugins and the TensorRT backend.

Importing this package imports neither tensorrt nor triton (nor torch); the names below load
their modules on first use::

    build_engine(onnx_path, output=None, options=None, **overrides) -> BuildReport
    engine_for(onnx_path, precision="auto") -> Path          # cached build for --backend trt
    check_engine(engine_path, onnx_path=None) -> (EngineRecord, warnings)
    TensorRTBackend(engine_path)                               # hrx.interface.Backend
    polygraphy_runner(engine_or_onnx_path, precision="auto")   # for hrx verify --backends trt
    register_plugins()                                         # hrx::SelectiveScan, hrx::MoETop1
    unsupported_ops(onnx_model, plugins=True) -> list[str]     # static check, no TensorRT needed
"""
from __future__ import annotations

from hrx.lazy import lazy_getattr

_LAZY = {
    "BuildOptions": "hrx.runtime.trt.builder",
    "BuildReport": "hrx.runtime.trt.builder",
    "build_engine": "hrx.runtime.trt.builder",
    "engine_for": "hrx.runtime.trt.builder",
    "EngineRecord": "hrx.runtime.trt.cache",
    "EngineMismatchError": "hrx.runtime.trt.cache",
    "check_engine": "hrx.runtime.trt.cache",
    "cached_engine_for": "hrx.runtime.trt.cache",
    "TensorRTBackend": "hrx.runtime.trt.backend",
    "polygraphy_runner": "hrx.runtime.trt.runner",
    "register_plugins": "hrx.runtime.trt.plugins",
    "unsupported_ops": "hrx.runtime.trt.ops",
    "missing_for_tensorrt": "hrx.runtime.trt.env",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr('hrx.runtime.trt', _LAZY)
