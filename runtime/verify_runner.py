"""``hrx verify --backends upscale:NAME``: a Polygraphy runner over the backend ``hrx upscale --backend NAME``
opens (:func:`hrx.runtime.factory.open_backend`), so verify checks the code that upscales (tiles in,
tiles out, its own sessions, engine cache and precision choice) and not only Polygraphy's runners."""
from __future__ import annotations

import os
from pathlib import Path

UPSCALE_BACKENDS = ("onnxrt-cpu", "onnxrt-cuda", "openvino", "trt")
PREFIX = "upscale:"


def backend_runner(path: str | os.PathLike, backend: str, precision: str | None = None):
    """A Polygraphy ``BaseRunner`` that opens ``backend`` on ``path`` as ``hrx upscale --engine PATH --backend
    BACKEND [--precision P]`` does. ``precision`` defaults to ``auto`` (TensorRT: the file's own), and to
    ``fp32`` for OpenVINO (verify compares numbers; its automatic choice may be BF16)."""
    import time
    from collections import OrderedDict

    import numpy as np
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    from hrx.runtime.factory import BackendRequest, open_backend

    precision = precision or ("fp32" if backend == "openvino" else "auto")

    class BackendRunner(BaseRunner):
        def __init__(self) -> None:
            super().__init__(name=PREFIX + backend, prefix="hrx-backend-runner")

        def activate_impl(self) -> None:
            self.backend = open_backend(BackendRequest(engine=Path(path), backend=backend, precision=precision))

        def get_input_metadata_impl(self):
            i = self.backend.info
            return TensorMetadata().add("input", np.float32, (i.batch, i.in_channels, i.tile, i.tile))

        def infer_impl(self, feed_dict):
            start = time.perf_counter()
            out = self.backend.infer(np.ascontiguousarray(feed_dict["input"], dtype=np.float32))
            self.inference_time = time.perf_counter() - start
            return OrderedDict(output=np.asarray(out, dtype=np.float32))

        def deactivate_impl(self) -> None:
            self.backend.close()
            del self.backend

    return BackendRunner()


def runner_factories() -> dict:
    """``{"upscale:NAME": factory}`` for :func:`hrx.export.compare.verify`'s ``runners``."""
    return {PREFIX + name: (lambda path, info, name=name: [backend_runner(path, name)]) for name in UPSCALE_BACKENDS}
