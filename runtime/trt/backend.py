"""The TensorRT implementation of :class:`hrx.interface.Backend`.

Buffers: PyTorch CUDA tensors (device memory), pinned PyTorch CPU tensors (host staging) and
``torch.cuda.Stream``/``Event``. One library, and the one HRX already depends on: the plugin
kernels (Triton, launched from PyTorch) run in the same CUDA context, PyTorch's caching allocator
serves the buffers, and no cuda-python or CuPy is needed at run time. TensorRT only sees raw
pointers (``IExecutionContext.set_tensor_address``) and a stream handle
(``execute_async_v3(stream.cuda_stream)``), as in TensorRT 10's Python API.

Overlap: the execution context runs on one CUDA stream; copies run on a second stream and are
ordered against it with events. Each of ``slots`` (default 2) buffer sets has pinned host
input/output and device input/output, so while the engine computes batch k, the host-to-device
copy of batch k+1 and the device-to-host copy of batch k-1 proceed, and the host stages and
unpacks batches meanwhile. :meth:`infer` is one synchronous round trip; :meth:`infer_many` keeps
``slots`` batches in flight.
"""
from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from hrx.errors import HRXError
from hrx.interface import Backend, ModelInfo


@dataclass
class _Slot:
    host_in: Any  # pinned torch CPU tensor, the engine's input dtype
    host_out: Any
    dev_in: Any  # torch CUDA tensors
    dev_out: Any
    uploaded: Any  # torch.cuda.Event: H2D done
    computed: Any  # engine done with dev_in / dev_out written
    downloaded: Any  # D2H done: host_out readable, dev_out reusable
    busy: bool = False


def check_tiles(tiles: np.ndarray, shape: tuple[int, ...]) -> None:
    """Raise :class:`HRXError` when ``tiles`` are not of the engine's ``shape``."""
    if tuple(tiles.shape) != tuple(shape):
        raise HRXError(f"TensorRT engine expects tiles of shape {list(shape)}, got {list(tiles.shape)} "
                       "(pad the last batch to the engine's batch size)")


def expected_shapes(info: ModelInfo) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Input and output shapes an HRX engine must have for its ModelInfo."""
    t = info.tile
    return (info.batch, info.in_channels, t, t), (info.batch, info.out_channels, t * info.scale, t * info.scale)


class TensorRTBackend(Backend):
    """Run an HRX engine: ``infer(float32 [batch, C, tile, tile]) -> float32 [batch, Co, tile*s, tile*s]``."""

    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, *, onnx_path: str | os.PathLike | None = None,
                 slots: int = 2, log: Callable[[str], None] | None = None) -> None:
        from hrx.runtime.trt.cache import check_engine, rebuild_command
        from hrx.runtime.trt.env import require_tensorrt, require_torch_cuda

        trt = require_tensorrt()
        require_torch_cuda()
        import torch

        log = log or (lambda _msg: None)
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise HRXError(f"{self.engine_path}: no such engine file")
        engine = self.engine_path.read_bytes()  # read once: checked against its record, then loaded
        record, warnings = check_engine(self.engine_path, onnx_path=onnx_path, engine=engine)
        for w in warnings:
            log(w)
        self.record = record
        self.info: ModelInfo = record.info()
        if record.plugins:  # JIT plugins need their Python definitions before deserialization
            from hrx.runtime.trt.plugins import register_plugins

            register_plugins()
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(engine)
        del engine
        if self._engine is None:
            again = rebuild_command(record.onnx_path, record.precision, self.engine_path, record.plugin_impl)
            raise HRXError(f"{self.engine_path}: TensorRT could not load the engine; rebuild it: {again}")
        self._context = self._engine.create_execution_context()
        self._in, self._out = self._io_names()
        self.input_shape = tuple(self._engine.get_tensor_shape(self._in))
        self.output_shape = tuple(self._engine.get_tensor_shape(self._out))
        want_in, want_out = expected_shapes(self.info)
        if self.input_shape[:1] == (-1,) and self.input_shape[1:] == want_in[1:]:  # a dynamic-batch engine
            self._context.set_input_shape(self._in, want_in)  # runs the metadata's batch; Triton batches more
            self.input_shape, self.output_shape = want_in, tuple(self._context.get_tensor_shape(self._out))
        if self.input_shape != want_in or self.output_shape != want_out:
            raise HRXError(f"{self.engine_path}: engine I/O {list(self.input_shape)} -> {list(self.output_shape)} "
                           f"does not match its model metadata {list(want_in)} -> {list(want_out)}")
        self._device = torch.device("cuda", torch.cuda.current_device())
        self._compute = torch.cuda.Stream(self._device)  # the execution context's stream
        self._copy = torch.cuda.Stream(self._device)  # H2D / D2H copies
        in_dtype = self._torch_dtype(self._engine.get_tensor_dtype(self._in))
        out_dtype = self._torch_dtype(self._engine.get_tensor_dtype(self._out))
        self._slots = [self._make_slot(in_dtype, out_dtype) for _ in range(max(1, slots))]
        self._next = 0

    # -- setup -------------------------------------------------------------------------------------
    def _io_names(self) -> tuple[str, str]:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise HRXError(f"{self.engine_path}: expected one input and one output, found {ins} and {outs}")
        return ins[0], outs[0]

    def _torch_dtype(self, trt_dtype):
        import torch

        np_dtype = np.dtype(self._trt.nptype(trt_dtype))
        if np_dtype not in (np.float32, np.float16):
            raise HRXError(f"{self.engine_path}: unsupported engine I/O type {np_dtype}")
        return torch.from_numpy(np.empty(0, np_dtype)).dtype

    def _make_slot(self, in_dtype, out_dtype) -> _Slot:
        import torch

        def pinned(shape, dtype):
            return torch.empty(shape, dtype=dtype, pin_memory=True)

        def device(shape, dtype):
            return torch.empty(shape, dtype=dtype, device=self._device)

        return _Slot(pinned(self.input_shape, in_dtype), pinned(self.output_shape, out_dtype),
                     device(self.input_shape, in_dtype), device(self.output_shape, out_dtype),
                     torch.cuda.Event(), torch.cuda.Event(), torch.cuda.Event())

    # -- the pipeline ------------------------------------------------------------------------------
    def _submit(self, tiles: np.ndarray) -> int:
        """Stage ``tiles`` and enqueue upload, inference and download; returns the slot index."""
        check_tiles(tiles, self.input_shape)
        index = self._next
        slot = self._slots[index]
        if slot.busy:
            raise HRXError("internal: TensorRT backend slot reused before its result was collected")
        slot.downloaded.synchronize()  # host_out/host_in of this slot's previous batch are free
        self._enqueue(slot, tiles)
        self._next = (self._next + 1) % len(self._slots)
        slot.busy = True
        return index

    def _enqueue(self, slot: _Slot, tiles: np.ndarray) -> None:
        """Host copy into pinned memory, then upload, inference and download on the two streams."""
        import torch

        slot.host_in.numpy()[...] = tiles  # host copy (and cast) into pinned memory
        with torch.cuda.stream(self._copy):
            self._copy.wait_event(slot.computed)  # the engine no longer reads dev_in
            slot.dev_in.copy_(slot.host_in, non_blocking=True)
            slot.uploaded.record(self._copy)
        with torch.cuda.stream(self._compute):
            self._compute.wait_event(slot.uploaded)
            self._compute.wait_event(slot.downloaded)  # dev_out of the previous batch was read
            self._context.set_tensor_address(self._in, slot.dev_in.data_ptr())
            self._context.set_tensor_address(self._out, slot.dev_out.data_ptr())
            if not self._context.execute_async_v3(self._compute.cuda_stream):
                raise HRXError(f"{self.engine_path}: TensorRT failed to enqueue the inference")
            slot.computed.record(self._compute)
        with torch.cuda.stream(self._copy):
            self._copy.wait_event(slot.computed)
            slot.host_out.copy_(slot.dev_out, non_blocking=True)
            slot.downloaded.record(self._copy)

    def _collect(self, index: int) -> np.ndarray:
        self._release(index)
        return self._slots[index].host_out.numpy().astype(np.float32, copy=True)

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        """One batch, synchronously: float32 [batch, C, tile, tile] -> float32 [batch, Co, tile*s, tile*s]."""
        return self._collect(self._submit(tiles))

    def infer_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Results of ``batches`` in order, with up to ``slots`` batches in flight (copies overlap compute).
        If the stream or the consumer stops early (an error while tiling, Ctrl-C, a closed generator),
        the batches still in flight are waited for and their slots freed, so the next image can run."""
        pending: deque[int] = deque()
        try:
            for tiles in batches:
                if len(pending) == len(self._slots):
                    yield self._collect(pending.popleft())
                pending.append(self._submit(tiles))
            while pending:
                yield self._collect(pending.popleft())
        finally:
            while pending:
                self._release(pending.popleft())

    def _release(self, index: int) -> None:
        """Wait for a submitted batch and free its slot, dropping the result."""
        slot = self._slots[index]
        slot.downloaded.synchronize()
        slot.busy = False

    def close(self) -> None:
        """Wait for the device, then drop the engine, its context and buffers; idempotent."""
        if getattr(self, "_slots", None) is None:
            return
        import torch

        torch.cuda.synchronize(self._device)
        self._slots = None
        self._context = None
        self._engine = None
        self._runtime = None

    @classmethod
    def from_onnx(cls, onnx_path: str | os.PathLike, precision: str = "auto", *,
                  log: Callable[[str], None] | None = None) -> "TensorRTBackend":
        """Build (once, into the user cache) and open the engine for ``onnx_path`` on this machine, in
        ``precision`` (``auto``: the file's own, :func:`hrx.runtime.trt.builder.precision_for`)."""
        from hrx.runtime.trt.builder import engine_for
        from hrx.runtime.trt.env import require_tensorrt, require_torch_cuda

        require_tensorrt()
        require_torch_cuda()
        return cls(engine_for(onnx_path, precision, log=log), onnx_path=onnx_path, log=log)
