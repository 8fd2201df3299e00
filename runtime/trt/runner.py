"""A Polygraphy ``TrtRunner`` for ``hrx verify --backends trt``.

``polygraphy_runner("m.onnx")`` builds the engine the way ``hrx upscale --backend trt`` does (plugins
registered, the file's own precision unless one is given) into the user engine cache and wraps it; ``polygraphy_runner("m.engine")``
checks the engine's record against this machine and loads it. The runner is the standard
``polygraphy.backend.trt.TrtRunner`` (``activate``/``infer``/``deactivate``, or a ``with`` block),
so the verify command can put it next to Polygraphy's ONNX Runtime runner in a ``Comparator``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hrx.errors import HRXError
from hrx.paths import ENGINE_SUFFIXES



def polygraphy_runner(engine_or_onnx_path: str | os.PathLike, precision: str = "auto", *,
                      name: str | None = None) -> Any:
    """A ``polygraphy.backend.trt.TrtRunner`` over an engine (built first from ONNX if needed).

    Raises MissingDependencyError (one line) without TensorRT or a CUDA GPU.
    """
    from hrx.runtime.trt.env import require_tensorrt

    require_tensorrt(what="hrx verify --backends trt")
    path = Path(engine_or_onnx_path)
    if not path.is_file():
        raise HRXError(f"{path}: no such file")
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from hrx.runtime.trt.cache import check_engine
    from hrx.runtime.trt.plugins import register_plugins

    if path.suffix.lower() == ".onnx":
        from hrx.runtime.trt.builder import engine_for

        onnx_path: Path | None = path
        engine_path = engine_for(path, precision)
    elif path.suffix.lower() in ENGINE_SUFFIXES:
        onnx_path, engine_path = None, path
    else:
        raise HRXError(f"{path}: expected an ONNX file or a TensorRT engine ({', '.join(ENGINE_SUFFIXES)})")
    record, _warnings = check_engine(engine_path, onnx_path=onnx_path)
    if record.plugins:
        register_plugins()
    return TrtRunner(EngineFromBytes(BytesFromPath(str(engine_path))), name=name or f"trt-{record.precision}")
