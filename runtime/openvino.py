"""OpenVINO CPU backend (``--backend openvino``): the ONNX files ``hrx export`` (``--ops native``) and
``hrx calibrate`` (Q/DQ INT8) write, compiled by OpenVINO's CPU plugin.

* Precision: always pinned with ``INFERENCE_PRECISION_HINT`` (``fp32`` -> f32, ``bf16`` -> bf16). Left
  unset, OpenVINO computes in BF16 on every CPU with AVX512-BF16 or AMX, silently. Q/DQ INT8 files run
  their quantized convolutions in INT8 and the rest in the hint's precision. HRX's FP32 islands are not
  kept in f32 inside a BF16 run: OpenVINO's per-node precision markers did not change the precision the
  CPU plugin ran them in (docs/cpu-engines.md).
* Plugin-op files (``hrx export --ops plugin``) are refused: OpenVINO's ONNX frontend has no conversion
  for ``hrx::SelectiveScan`` / ``hrx::MoETop1`` and does not inline their ONNX local functions.
* Compiled models are cached in ``cache_root()/openvino/<stem>-<sha256[:16]>`` (OpenVINO's ``CACHE_DIR``;
  OpenVINO keys each blob inside by the graph and the compile options), so a second open skips
  compilation.
* Tile batches run on a pool of synchronous infer requests (one per stream by default):
  :meth:`~OpenVINOBackend.infer` takes a free request and is safe from several threads, and
  :meth:`OpenVINOBackend.infer_many` keeps every request busy from threads of its own and returns the
  results in order. No Python callback runs on OpenVINO's threads.
* Parallelism on a CPU of k cores, picked by :data:`CPU_PARALLELISM`: ``"streams"`` (default), one
  compiled model with k streams (OpenVINO's THROUGHPUT mode) and its own queue of requests, or
  ``"sessions"``, k compiled models of one thread and one stream each behind
  :class:`hrx.runtime.pool.SharedSessions` (what ONNX Runtime does, ``--workers``), compiled at once on
  threads of their own (:func:`open_sessions`).

``openvino`` is imported inside the functions that need it.
"""
from __future__ import annotations

import importlib.util
import os
import queue
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from hrx.errors import HRXError, MissingDependencyError
from hrx.interface import Backend, ModelInfo

PRECISIONS = ("fp32", "bf16")  # compute precision of the float ops (INT8 comes from a Q/DQ file)
HINTS = {"fp32": "f32", "bf16": "bf16"}  # -> INFERENCE_PRECISION_HINT
PARALLELISM = ("streams", "sessions")
# how several CPU cores share the work: "streams" (one compiled model with k OpenVINO streams) or
# "sessions" (k one-thread compiled models, like ONNX Runtime's default, compiled in parallel). One switch
# for the whole runtime. "streams" is the default: one compile and one read of the compiled-model cache
# instead of k, which is most of what opening costs (benchmarks/bench_startup.py times both modes)
CPU_PARALLELISM = "streams"
INSTALL_HINT = "pip install openvino"


class OpenVINOCompileError(HRXError):
    """OpenVINO cannot read or compile this graph (the factory falls back to ONNX Runtime on it)."""


def openvino_problem() -> str | None:
    """Why OpenVINO cannot be used here (one line), or None."""
    if importlib.util.find_spec("openvino") is None:
        return f"OpenVINO is not installed ({INSTALL_HINT})"
    return None


def require_openvino():
    """The ``openvino`` module, or :class:`MissingDependencyError` naming the install command."""
    problem = openvino_problem()
    if problem is not None:
        raise MissingDependencyError(problem)
    import openvino

    return openvino


@lru_cache(maxsize=1)
def core() -> "openvino.Core":  # noqa: F821
    """One ``openvino.Core`` per process (it holds the CPU plugin and its thread pools)."""
    return require_openvino().Core()


def openvino_version() -> str:
    """The installed OpenVINO version."""
    return require_openvino().__version__


def cache_dir(path: str | os.PathLike, sha256: str) -> Path:
    """Where compiled models of the ONNX file ``path`` (content hash ``sha256``) are cached."""
    from hrx.paths import cache_root

    return cache_root() / "openvino" / f"{Path(path).stem}-{sha256[:16]}"


def prime_tensors() -> None:
    """Run, on the calling thread, the C++ static initialiser behind the first tensor ``.data`` of the
    process (it takes the GIL: two threads reaching it at once deadlock); after this, backends can be
    opened on several threads at once."""
    ov = require_openvino()
    ov.Tensor(np.zeros(1, np.float32)).data


def open_sessions(path: str | os.PathLike, threads: Sequence[int], **options) -> list["OpenVINOBackend"]:
    """One :class:`OpenVINOBackend` of ``threads[k]`` threads per entry (``options``: the other arguments),
    compiled at once on threads of their own (OpenVINO compiles, and reads its cache, without the GIL).
    The first error is raised after closing the ones that opened."""
    prime_tensors()
    if len(threads) == 1:
        return [OpenVINOBackend(path, threads=threads[0], **options)]
    with ThreadPoolExecutor(len(threads), thread_name_prefix="hrx-openvino-open") as opener:
        futures = [opener.submit(OpenVINOBackend, path, threads=t, **options) for t in threads]
    opened = [f.result() for f in futures if f.exception() is None]
    failed = [f.exception() for f in futures if f.exception() is not None]
    if failed:
        for backend in opened:
            backend.close()
        raise failed[0]
    return opened


def plugin_refusal(path: str | os.PathLike) -> str:
    """The one-line reason OpenVINO cannot run ``path`` (it has ``hrx::`` plugin ops)."""
    return (f"{path}: OpenVINO cannot run hrx:: plugin ops (its ONNX frontend does not inline the file's "
            "local functions); export the model with `hrx export --ops native`")


def misread_bf16(path: str | os.PathLike) -> int:
    """How many BFLOAT16 weights of the ONNX file ``path`` are stored in ``int32_data`` (the field
    ``onnx.helper.make_tensor`` fills for a list of values), which OpenVINO's ONNX reader takes as numbers, not
    as bit patterns: 0.5 (0x3F00) becomes 16128.0 and the model outputs NaN. ``raw_data`` is read right,
    and so are FLOAT16 weights in either field."""
    import onnx
    from onnx import TensorProto

    model = onnx.load(str(path), load_external_data=False)
    tensors = list(model.graph.initializer) + [a.t for n in model.graph.node for a in n.attribute
                                               if a.type == onnx.AttributeProto.TENSOR]
    return sum(t.data_type == TensorProto.BFLOAT16 and len(t.int32_data) > 0 for t in tensors)


def bf16_refusal(path: str | os.PathLike) -> str:
    return (f"{path}: its BFLOAT16 weights are stored as int32_data, which OpenVINO misreads (the output would be "
            "NaN); export it again with this hrx (`hrx export ... --precision bf16` writes raw_data)")


class OpenVINOBackend(Backend):
    """Runs an HRX ONNX export (static input ``[batch, C, tile, tile]``) with OpenVINO on the CPU.

    ``precision``: ``fp32`` or ``bf16`` (pinned, see the module doc); ``threads``: inference threads
    (0: OpenVINO's default, every core); ``streams``: OpenVINO streams sharing them; ``requests``: infer
    requests run at once (0: one per stream); ``cache``: use the compiled-model cache; ``pin_cores``:
    OpenVINO's CPU pinning (default: off for one-thread models, which run several side by side).
    """

    thread_safe = True

    def __init__(self, path: str | os.PathLike, *, precision: str = "fp32", threads: int = 0, streams: int = 1,
                 requests: int = 0, cache: bool = True, pin_cores: bool | None = None, sha256: str = "") -> None:
        ov = require_openvino()
        if precision not in PRECISIONS:
            raise HRXError(f"unknown OpenVINO precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        if streams < 1 or threads < 0 or requests < 0:
            raise HRXError(f"OpenVINO needs streams >= 1, threads >= 0 and requests >= 0 "
                           f"(got {streams}, {threads}, {requests})")
        self.path = Path(path)
        if not self.path.is_file():
            raise HRXError(f"{self.path}: no such ONNX file")
        self.info = ModelInfo.from_onnx(self.path)
        if self.info.ops == "plugin":
            raise OpenVINOCompileError(plugin_refusal(self.path))
        if self.info.precision != "fp32" and misread_bf16(self.path):
            raise HRXError(bf16_refusal(self.path))
        self.precision = precision
        self.name = "openvino"
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": HINTS[precision], "NUM_STREAMS": str(streams)}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if pin_cores is None:  # several one-thread models side by side must not all pin to the same core
            pin_cores = threads == 0 or threads > 1
        config["ENABLE_CPU_PINNING"] = bool(pin_cores)
        self.loaded_from_cache = False
        i = self.info
        self.input_shape = (i.batch, i.in_channels, i.tile, i.tile)
        self.output_shape = (i.batch, i.out_channels, i.tile * i.scale, i.tile * i.scale)
        try:
            if cache:
                from hrx.paths import file_sha256

                folder = cache_dir(self.path, sha256 or file_sha256(self.path))  # sha256: the caller's, if known
                try:
                    folder.mkdir(parents=True, exist_ok=True)
                    config["CACHE_DIR"] = str(folder)
                except OSError:  # a read-only cache: compile every time
                    pass
            if i.extra.get("batch_axis") == "dynamic":  # `hrx export --batch dynamic`: compiled at this run's batch
                model = core().read_model(str(self.path))
                model.reshape({model.input(0): ov.PartialShape(list(self.input_shape))})
                self.compiled = core().compile_model(model, "CPU", config)
            else:  # from the path: a cache hit skips reading the ONNX file
                self.compiled = core().compile_model(str(self.path), "CPU", config)
        except (RuntimeError, ValueError, TypeError) as e:  # OpenVINO raises RuntimeError for its Exception
            raise OpenVINOCompileError(f"{self.path}: OpenVINO cannot compile it ({_first_line(e)})") from None
        try:
            self.loaded_from_cache = bool(self.compiled.get_property("LOADED_FROM_CACHE"))
        except RuntimeError:
            self.loaded_from_cache = False
        inp = self.compiled.input(0)
        for port, want, what in ((inp, self.input_shape, "input"), (self.compiled.output(0), self.output_shape, "output")):
            declared = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
            if len(declared) != 4 or any(d not in (-1, e) for d, e in zip(declared, want)):
                raise HRXError(f"{self.path}: {what} {port.get_any_name()} has shape {list(declared)}, but the "
                               f"metadata says {list(want)}")
        self._dtype = np.float16 if inp.get_element_type() == ov.Type.f16 else np.float32
        self.streams = streams
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._count = requests or streams
        for _ in range(self._count):
            request = self.compiled.create_infer_request()
            # the first `.data` of a tensor in the process runs a C++ static initialiser that takes the GIL;
            # two threads reaching it at once deadlock (one holds the GIL and waits for the initialiser's
            # guard), so it runs here, on the thread that opens the backends, before any tile work
            request.get_input_tensor(0).data, request.get_output_tensor(0).data
            self._requests.put(request)
        self._runner = ThreadPoolExecutor(self._count, thread_name_prefix="hrx-openvino") if self._count > 1 else None

    def infer(self, tiles: np.ndarray) -> np.ndarray:
        """Run one batch of tiles (shape checked against the model's)."""
        if tuple(tiles.shape) != self.input_shape:
            raise HRXError(f"{self.path}: expected tiles of shape {list(self.input_shape)}, got {list(tiles.shape)}")
        request = self._requests.get()
        try:  # InferRequest.infer releases the GIL while OpenVINO computes
            request.infer({0: np.ascontiguousarray(tiles, dtype=self._dtype)})
            return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)
        finally:
            self._requests.put(request)

    def infer_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Results of ``batches`` in order, several in flight when the backend has more than one request."""
        if self._runner is None:
            for batch in batches:
                yield self.infer(batch)
            return
        pending: deque[Future] = deque()
        try:
            for batch in batches:
                pending.append(self._runner.submit(self.infer, batch))
                if len(pending) > self._count:  # every request busy, plus one waiting
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # stopped early: drop what has not started
            for future in pending:
                future.cancel()

    def close(self) -> None:
        """Stop the request threads and drop the compiled model."""
        runner = getattr(self, "_runner", None)
        if runner is not None:
            runner.shutdown(wait=True, cancel_futures=True)
        self._runner = None
        self.compiled = None


def _first_line(e: BaseException) -> str:
    """The informative line of an OpenVINO exception (its first lines name C++ source files)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    text = (useful or lines or [type(e).__name__])[0]
    return text[:300]


def polygraphy_runner(path: str | os.PathLike, precision: str = "fp32"):
    """A Polygraphy runner of the file on OpenVINO (``hrx verify --backends openvino``), pinned to
    ``precision`` (f32 by default: verify compares numbers)."""
    import time
    from collections import OrderedDict

    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class OpenVINORunner(BaseRunner):
        def __init__(self) -> None:
            super().__init__(name=f"openvino-{HINTS[precision]}", prefix="openvino-runner")

        def activate_impl(self) -> None:
            self.backend = OpenVINOBackend(path, precision=precision)

        def get_input_metadata_impl(self):
            return TensorMetadata().add("input", np.float32, self.backend.input_shape)

        def infer_impl(self, feed_dict):
            start = time.perf_counter()
            out = self.backend.infer(feed_dict["input"])
            self.inference_time = time.perf_counter() - start
            return OrderedDict(output=out)

        def deactivate_impl(self) -> None:
            self.backend.close()
            del self.backend

    return OpenVINORunner()
