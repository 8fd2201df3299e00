"""Tiled inference over images of any size on OpenVINO, ONNX Runtime, TensorRT or PyTorch.

Public API (imported lazily: ``import hrx.runtime`` loads neither onnxruntime, torch nor tensorrt)::

    create_session(path, providers=None)          # the one onnxruntime.InferenceSession factory
    open_backend(BackendRequest(engine=..., model=..., backend="auto", precision="auto"))  # -> Backend
    resolve_request(request) -> (request, PrecisionChoice | None)  # what auto means here, decided once
    TileSpec(tile, overlap, scale, size_multiple, batch, merge) / upscale_tiled(image, backend.infer, spec)
    read_image(path) -> Picture / write_image(path, picture, fmt)
    plan_jobs(inputs, out_dir, fmt, recursive) / run_batch(backend, jobs, spec, options) -> BatchReport
    plan_workers(devices, workers, threads) / open_pool(open_one, workers) / run_pool(backends, workers, jobs, ...)
    upscale_video(backend, spec, source, output, VideoOptions(...)) -> VideoResult   # PyAV (hrx[video])
    run_upscale(UpscaleRequest(inputs, output, ...), view) -> UpscaleOutcome   # the whole `hrx upscale` run

Heavy backends (onnxruntime, tensorrt, torch) are imported inside the functions that need them.
"""
from __future__ import annotations

from hrx.lazy import lazy_getattr

_LAZY = {
    "create_session": "hrx.runtime.onnxrt",
    "OnnxRuntimeBackend": "hrx.runtime.onnxrt",
    "TorchBackend": "hrx.runtime.torch_backend",
    "OpenVINOBackend": "hrx.runtime.openvino",
    "choose_precision": "hrx.runtime.precision_policy",
    "resolve_request": "hrx.runtime.factory",
    "BackendRequest": "hrx.runtime.factory",
    "open_backend": "hrx.runtime.factory",
    "TileSpec": "hrx.runtime.tiling",
    "upscale_tiled": "hrx.runtime.tiling",
    "Picture": "hrx.runtime.images",
    "read_image": "hrx.runtime.images",
    "write_image": "hrx.runtime.images",
    "BatchOptions": "hrx.runtime.pipeline",
    "BatchReport": "hrx.runtime.pipeline",
    "plan_jobs": "hrx.runtime.pipeline",
    "run_batch": "hrx.runtime.pipeline",
    "VideoOptions": "hrx.runtime.video",
    "upscale_video": "hrx.runtime.video",
    "UpscaleRequest": "hrx.runtime.upscale_run",
    "run_upscale": "hrx.runtime.upscale_run",
    "Worker": "hrx.runtime.pool",
    "plan_workers": "hrx.runtime.pool",
    "open_pool": "hrx.runtime.pool",
    "run_pool": "hrx.runtime.pool",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr('hrx.runtime', _LAZY)
