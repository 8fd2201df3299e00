"""Pick and open a backend from what the user passed: an engine file (``.onnx``, ``.engine`` / ``.plan``)
or a checkpoint, ``--backend`` and ``--precision``.

``auto``: ``.onnx`` -> ONNX Runtime CUDA when onnxruntime-gpu can start CUDA here, else OpenVINO on the CPU
with the precision :mod:`hrx.runtime.precision_policy` picks; when OpenVINO is missing or cannot compile
the graph (``--ops plugin`` files), ONNX Runtime CPU, with one line that says why (``--backend trt`` with
an ``.onnx`` builds a TensorRT engine into the user cache on first use: minutes, so ``auto`` never does
it unasked); ``.engine`` / ``.plan`` -> TensorRT; a checkpoint -> PyTorch (CUDA when available).

:func:`resolve_request` makes these decisions once (the CLI calls it before opening one backend per
worker, and prints the precision line); :func:`open_backend` resolves what is left and opens.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from hrx.checkpoint import BUNDLED_TILE
from hrx.errors import HRXError, MissingDependencyError
from hrx.paths import ENGINE_SUFFIXES, ONNX_SUFFIXES
from hrx.interface import Backend

BACKENDS = ("auto", "openvino", "onnxrt-cpu", "onnxrt-cuda", "trt", "torch", "triton")


@dataclass(frozen=True)
class BackendRequest:
    engine: Path | None = None  # .onnx / .engine / .plan
    model: str | None = None  # checkpoint path or bundled name (PyTorch)
    backend: str = "auto"
    tile: int | None = None  # PyTorch only: engines have a static tile
    batch: int | None = None  # PyTorch only
    threads: int = 0  # CPU intra-op threads, ONNX Runtime, OpenVINO and PyTorch (0: the library's default)
    # auto | fp32 | fp16 | bf16 | int8: CPU engines (hrx.runtime.precision_policy); --backend trt with an .onnx:
    # the build precision (auto: the file's own, hrx.runtime.trt.builder.precision_for)
    precision: str = "auto"
    min_psnr: float = 50.0  # auto: the BF16 fidelity gate's threshold, dB against FP32
    gate_images: Path | None = None  # auto: photos for the fidelity gate (None: the bundled ones)
    deep_output: bool = False  # auto: some output has more than 8 bits per channel (then FP32)
    fallback: bool = False  # an OpenVINO that cannot compile the graph falls back to ONNX Runtime CPU (auto)
    streams: int = 1  # OpenVINO streams of one compiled model (hrx.runtime.openvino.CPU_PARALLELISM "streams")
    device: int | None = None  # CUDA device number (ONNX Runtime CUDA, TensorRT, PyTorch); None: the current one
    log: Callable[[str], None] | None = None  # progress lines of slow steps (TensorRT engine build)
    url: str | None = None  # Triton server (--backend triton): http://host:port, host:port or grpc://host:port
    model_name: str | None = None  # the model's name on the Triton server
    timeout: float = 60.0  # Triton: seconds for connecting and for each request
    engine_sha256: str = ""  # of ``engine``, once resolve_request has read it (OpenVINO): hashed once per run


def resolve_request(request: BackendRequest) -> tuple[BackendRequest, "PrecisionChoice | None"]:  # noqa: F821
    """Decide, once, what ``auto`` means here: the bundled model's export (made on first use), OpenVINO or
    ONNX Runtime for an ``.onnx`` on the CPU, and the precision. Returns the request with those decisions
    (``backend="openvino"`` and a concrete ``precision``; ``fallback`` when ``auto`` chose OpenVINO) and,
    for OpenVINO and PyTorch, the :class:`~hrx.runtime.precision_policy.PrecisionChoice` whose ``line``
    says what was chosen and why. Raises :class:`HRXError` for combinations that cannot work."""
    from hrx.runtime.precision_policy import PRECISION_CHOICES

    if request.backend not in BACKENDS:
        raise HRXError(f"unknown backend {request.backend!r}; choose from {', '.join(BACKENDS)}")
    if request.precision not in PRECISION_CHOICES:
        raise HRXError(f"unknown precision {request.precision!r}; choose from {', '.join(PRECISION_CHOICES)}")
    if request.backend == "triton" or request.url is not None or request.model_name is not None:
        if request.precision != "auto":
            raise HRXError("--precision applies to local engines; a Triton server runs its model as deployed")
        return request, None
    if request.engine is None and request.model is None:
        if request.backend == "torch":
            request = dataclasses.replace(request, model=DEFAULT_MODEL)
        else:
            request = dataclasses.replace(request, engine=default_engine(DEFAULT_MODEL, log=request.log))
    if request.engine is not None and request.model is not None:
        raise HRXError("pass either --engine or --model, not both")
    if request.model is not None:
        return request, _torch_precision(request.precision)
    engine = Path(request.engine)
    if request.backend == "trt" and engine.suffix.lower() in ONNX_SUFFIXES:
        return request, None  # the build precision: the file's own or --precision (hrx.runtime.trt.builder)
    if request.precision == "fp16":
        raise HRXError("--precision fp16 applies to --backend trt (a TensorRT build from an .onnx); the CPU engines "
                       "run fp32, bf16 or int8, and an FP16 export runs as written with --precision auto")
    if request.backend in ("trt", "torch"):
        if request.precision != "auto":
            raise HRXError(f"--precision applies to OpenVINO, ONNX Runtime, PyTorch checkpoints and TensorRT builds "
                           f"from an .onnx, not --backend {request.backend} with {engine.name}")
        return request, None
    if engine.suffix.lower() not in ONNX_SUFFIXES or not engine.is_file():
        if request.precision != "auto" and engine.suffix.lower() in ENGINE_SUFFIXES:
            raise HRXError(f"{engine}: a TensorRT engine's precision is fixed when it is built; drop --precision")
        return request, None  # open_backend reports the missing file / unknown type
    if request.backend == "openvino" or (request.backend == "auto" and request.device is None and not _cuda()):
        try:
            return _resolve_openvino(engine, request)
        except MissingDependencyError as e:
            if request.backend == "openvino":
                raise
            _say(request, f"{e}: running ONNX Runtime CPU instead")
        except _openvino_compile_error() as e:
            if request.backend == "openvino":
                raise
            _say(request, f"{e}; running ONNX Runtime CPU instead")
        request = dataclasses.replace(request, backend="onnxrt-cpu")
    _check_onnxruntime_precision(engine, request.precision)
    return request, None


def _resolve_openvino(engine: Path, request: BackendRequest):
    from hrx.interface import ModelInfo
    from hrx.runtime.openvino import OpenVINOCompileError, plugin_refusal, require_openvino
    from hrx.runtime.precision_policy import choose_precision

    from hrx.paths import file_sha256

    require_openvino()
    info = ModelInfo.from_onnx(engine)
    if info.ops == "plugin":
        raise OpenVINOCompileError(plugin_refusal(engine))
    sha256 = request.engine_sha256 or file_sha256(engine)  # the gate's key and every compiled model's cache
    choice = choose_precision(request.precision, engine, info, deep_output=request.deep_output,
                              images=request.gate_images, min_psnr=request.min_psnr, sha256=sha256)
    # what OpenVINO computes in: int8 (a Q/DQ file), else the choice's float compute; a file exported in
    # FP16 / BF16 runs as written with the fp32 hint (resolved again, "fp32" is taken as asked on any CPU)
    precision = "int8" if choice.precision == "int8" else choice.compute
    return dataclasses.replace(request, engine=engine, backend="openvino", precision=precision, engine_sha256=sha256,
                               fallback=request.fallback or request.backend == "auto"), choice


def _openvino_compile_error() -> type[Exception]:
    from hrx.runtime.openvino import OpenVINOCompileError

    return OpenVINOCompileError


def _cuda() -> bool:
    from hrx.runtime.onnxrt import cuda_available

    return cuda_available()


def _say(request: BackendRequest, line: str) -> None:
    if request.log is not None:
        request.log(line)


def _torch_precision(precision: str):
    from hrx.runtime.precision_policy import PrecisionChoice

    if precision in ("int8", "fp16"):
        raise HRXError(f"--precision {precision} runs an exported file ({'hrx calibrate' if precision == 'int8' else 'a TensorRT build'}); "
                       "PyTorch runs fp32 or bf16")
    if precision == "bf16":
        return PrecisionChoice("bf16", "bf16", "asked: PyTorch autocast BF16, channels_last")
    return None  # FP32, as always


def _check_onnxruntime_precision(engine: Path, precision: str) -> None:
    """ONNX Runtime runs a file as written: no BF16 path on the CPU, INT8 only from a Q/DQ file."""
    if precision in ("auto", "fp32"):
        return
    from hrx.interface import ModelInfo
    from hrx.runtime.precision_policy import is_int8

    int8 = is_int8(ModelInfo.from_onnx(engine))
    if precision == "bf16":
        raise HRXError("--precision bf16: ONNX Runtime has no BF16 path on the CPU; use --backend openvino (or auto)")
    if precision == "int8" and not int8:
        raise HRXError(f"{engine}: --precision int8 needs an INT8 Q/DQ file; make one with "
                       f"`hrx calibrate {engine} --images PHOTOS`")


def open_backend(request: BackendRequest) -> Backend:
    """Open the backend ``request`` asks for; raises :class:`HRXError` for combinations that cannot work."""
    request, _ = resolve_request(request)
    if request.backend == "triton" or request.url is not None or request.model_name is not None:
        return _open_triton(request)
    if request.model is not None:
        return _open_checkpoint(request)
    if request.device is not None and request.backend == "onnxrt-cpu":
        raise HRXError("--device/--devices choose CUDA devices; --backend onnxrt-cpu runs on the CPU (--workers, --threads)")
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
        if request.precision != "auto":
            raise HRXError(f"{engine}: a TensorRT engine's precision is fixed when it is built; drop --precision")
        return _open_tensorrt(engine, device=request.device)
    raise HRXError(f"{engine}: unknown engine type {suffix or '(no suffix)'}; expected .onnx, .engine or .plan")


DEFAULT_MODEL = "default-x4"
DEFAULT_TILE_CPU = BUNDLED_TILE  # small tiles keep CPU memory low; the shipped ONNX files have this tile


def default_engine(name: str = DEFAULT_MODEL, tile: int = DEFAULT_TILE_CPU,
                   log: Callable[[str], None] | None = None) -> Path:
    """The ONNX file of a bundled model: the one shipped in ``hrx/weights`` when it has this tile and
    was exported from this checkpoint (its metadata's ``checkpoint_sha256``), which needs no PyTorch;
    otherwise an export made on first use (PyTorch: the ``export`` extra) and cached in the user cache
    folder, keyed by the checkpoint's sha256."""
    from hrx.checkpoint import bundled_onnx, resolve_checkpoint
    from hrx.paths import file_sha256
    from hrx.interface import ModelInfo
    from hrx.paths import cache_root

    ckpt = resolve_checkpoint(name)
    sha = file_sha256(ckpt)
    shipped = bundled_onnx(name)
    if shipped.is_file():
        info = ModelInfo.from_onnx(shipped)
        if info.tile == tile and info.checkpoint_sha256 == sha:
            return shipped
    path = cache_root() / "onnx" / f"{name}-{sha[:16]}-t{tile}.onnx"
    if not path.is_file():
        from hrx.extras import installed, missing_error

        if not installed("torch"):
            raise missing_error(f"bundled model {name} at tile {tile} is not shipped as ONNX: exporting it", "torch")
        from hrx.export.onnx_export import export_onnx

        if log:
            log(f"first use of bundled model {name} at tile {tile}: exporting it to {path} (once)")
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(ckpt, path, tile=tile)
    return path


def engine_by_name(engine: Path) -> Path:
    """``--engine default-x1``: a bundled model's name, where no such file is, stands for its shipped ONNX
    file (or its export, made once); any other path is returned as it is (a missing one fails when opened)."""
    from hrx.checkpoint import bundled_models

    if engine.exists() or str(engine) not in bundled_models():
        return engine
    return default_engine(str(engine))


def _open_onnx(path: Path, request: BackendRequest) -> Backend:
    from hrx.runtime.onnxrt import OnnxRuntimeBackend, cuda_available

    if request.backend == "torch":
        raise HRXError(f"{path}: --backend torch cannot run an ONNX file; pass the checkpoint with --model")
    if request.backend == "trt":  # builds the engine into the user cache on first use (minutes), then reuses it
        return _open_tensorrt(path, from_onnx=True, log=request.log, device=request.device,
                              precision=request.precision)
    if request.backend == "openvino":
        return _open_openvino(path, request)
    if request.precision not in ("auto", "fp32", "int8"):
        _check_onnxruntime_precision(path, request.precision)
    cuda_device = request.device or 0
    if request.backend == "onnxrt-cuda":
        return OnnxRuntimeBackend(path, "cuda", request.threads, cuda_device)
    if request.backend == "auto" and cuda_available():
        try:
            return OnnxRuntimeBackend(path, "cuda", request.threads, cuda_device)
        except MissingDependencyError:  # the CUDA provider is installed but cannot start: CPU it is
            if request.device is not None:
                raise
    if request.device is not None:
        raise MissingDependencyError(f"--device {request.device}: this onnxruntime has no CUDA provider "
                                     "(install onnxruntime-gpu); without --device it runs on the CPU")
    return OnnxRuntimeBackend(path, "cpu", request.threads)


def open_cpu_sessions(request: BackendRequest, threads: Sequence[int]) -> list[Backend]:
    """One CPU runner per entry of ``threads`` (its intra-op threads), for workers that share the tiles of
    every image. OpenVINO (a request :func:`resolve_request` resolved to it) follows
    :data:`hrx.runtime.openvino.CPU_PARALLELISM`: ``"streams"``, one compiled model with a stream per
    worker, the same object for every worker; ``"sessions"``, one compiled model per worker, compiled at
    once. When it cannot compile and ``request.fallback``: ONNX Runtime CPU sessions, with one line.
    Other backends: :func:`open_backend` per worker, in turn."""
    engine = Path(request.engine) if request.engine is not None else None
    if (request.backend != "openvino" or len(threads) < 2 or engine is None or not engine.is_file()
            or engine.suffix.lower() not in ONNX_SUFFIXES or request.device is not None or request.tile is not None
            or request.batch is not None):
        return _open_each(request, threads)
    from hrx.runtime import openvino

    compute = "bf16" if request.precision == "bf16" else "fp32"
    try:
        if openvino.CPU_PARALLELISM == "streams":
            shared = openvino.OpenVINOBackend(engine, precision=compute, threads=sum(threads), streams=len(threads),
                                              sha256=request.engine_sha256)
            return [shared] * len(threads)
        return openvino.open_sessions(engine, threads, precision=compute, sha256=request.engine_sha256)
    except openvino.OpenVINOCompileError as e:
        if not request.fallback:
            raise
        _say(request, f"{e}; running ONNX Runtime CPU instead")
        return _open_each(dataclasses.replace(request, backend="onnxrt-cpu"), threads)


def _open_each(request: BackendRequest, threads: Sequence[int]) -> list[Backend]:
    backends: list[Backend] = []
    try:
        for t in threads:
            backends.append(open_backend(dataclasses.replace(request, threads=t)))
    except BaseException:
        for b in backends:
            b.close()
        raise
    return backends


def _open_openvino(path: Path, request: BackendRequest) -> Backend:
    """OpenVINO with the precision :func:`resolve_request` chose (``int8``: the Q/DQ file's float ops in FP32,
    as its quality gate measured them); ``fallback``: ONNX Runtime CPU, with one line, when it cannot compile."""
    from hrx.runtime.onnxrt import OnnxRuntimeBackend
    from hrx.runtime.openvino import OpenVINOBackend, OpenVINOCompileError

    if request.device is not None:
        raise HRXError("--device/--devices choose CUDA devices; --backend openvino runs on the CPU (--workers, --threads)")
    compute = "bf16" if request.precision == "bf16" else "fp32"
    try:
        return OpenVINOBackend(path, precision=compute, threads=request.threads, streams=request.streams,
                               sha256=request.engine_sha256)
    except OpenVINOCompileError as e:
        if not request.fallback:
            raise
        _say(request, f"{e}; running ONNX Runtime CPU instead")
        return OnnxRuntimeBackend(path, "cpu", request.threads)


def _open_tensorrt(path: Path, from_onnx: bool = False, log: Callable[[str], None] | None = None,
                   device: int | None = None, precision: str = "auto") -> Backend:
    if device is not None:  # TensorRTBackend runs on the calling thread's current CUDA device
        from hrx.runtime.pool import bind_cuda_device

        bind_cuda_device(device)
    try:
        from hrx.runtime.trt.backend import TensorRTBackend
    except ImportError as e:  # the backend raises MissingDependencyError itself when tensorrt is missing
        raise MissingDependencyError(f"{path}: the TensorRT backend is not available here ({e})") from None
    if from_onnx:
        return TensorRTBackend.from_onnx(path, precision, log=log)
    return TensorRTBackend(path, log=log)


def _open_triton(request: BackendRequest) -> Backend:
    """A model on a Triton server: metadata from the server, tiles inferred remotely."""
    from hrx.runtime.inference_server import TritonBackend, TritonError

    if request.backend not in ("auto", "triton"):
        raise HRXError(f"--url and --model-name go with --backend triton, not --backend {request.backend}")
    if not request.url or not request.model_name:
        raise TritonError("--backend triton needs --url (http://HOST:PORT or grpc://HOST:PORT) and --model-name")
    if request.engine is not None or request.model is not None or request.tile is not None or request.batch is not None:
        raise HRXError("--backend triton takes the model, tile and batch from the server: drop --engine, --model, "
                       "--tile and --batch")
    return TritonBackend(request.url, request.model_name, timeout=request.timeout)


def _open_checkpoint(request: BackendRequest) -> Backend:
    from hrx.checkpoint import resolve_checkpoint
    from hrx.runtime.torch_backend import DEFAULT_TILE, TorchBackend

    if request.backend not in ("auto", "torch"):
        raise HRXError(f"--backend {request.backend} needs an engine file; export the checkpoint with `hrx export` "
                       "and pass it with --engine")
    path = resolve_checkpoint(request.model)
    from hrx.extras import installed, missing_error

    if not installed("torch"):
        raise missing_error("hrx upscale --model (the PyTorch backend)", "torch")
    import torch

    if request.device is not None:
        if not torch.cuda.is_available():
            raise MissingDependencyError(f"--device {request.device}: PyTorch has no CUDA device here")
        device = f"cuda:{request.device}"
    else:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cpu" and request.threads:
            torch.set_num_threads(request.threads)  # process-wide: CPU workers share one pool of threads
    return TorchBackend(os.fspath(path), tile=request.tile or DEFAULT_TILE, batch=request.batch or 1, device=device,
                        precision="bf16" if request.precision == "bf16" else "fp32")
