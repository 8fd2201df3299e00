"""Engine records and the engine cache.

A TensorRT engine only runs on the TensorRT version that built it and on GPUs of the compute
capability it was built for. Every engine ``model.engine`` therefore gets a sidecar
``model.engine.json`` (an :class:`EngineRecord`): the ONNX sha256 and path, TensorRT version,
GPU name and compute capability, precision, I/O shapes, plugins and the model's
:class:`~hrx.interface.ModelInfo`, so the runtime can tile with an engine alone.

:func:`check_engine` compares a record with this machine and says, in one line, why an engine
cannot run and the command that rebuilds it. :func:`cached_engine_for` names the engine that
``hrx upscale --engine model.onnx --backend trt`` builds once into the user cache and reuses.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from hrx.errors import HRXError
from hrx.export.onnx_tools import normalize_precision
from hrx.interface import bounded_int
from hrx.paths import atomic_write_all, atomic_write_bytes, cache_root, file_sha256
from hrx.interface import ModelInfo
from hrx.runtime.trt.env import GpuInfo

RECORD_SCHEMA = 1
_PRECISION_FLAG = {"fp32": "", "fp16": "--fp16", "bf16": "--bf16", "int8": "--int8"}


class EngineMismatchError(HRXError):
    """The engine cannot run here (other TensorRT, other GPU) or its ONNX changed."""


@dataclass
class EngineRecord:
    onnx_sha256: str
    onnx_path: str  # absolute path at build time (for the rebuild command)
    precision: str  # one of hrx.export.onnx_tools.PRECISIONS (strongly typed: the graph's types)
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.9"
    input_name: str
    input_shape: list[int]
    output_name: str
    output_shape: list[int]
    model_info: dict[str, str] = field(default_factory=dict)  # ModelInfo.to_props()
    plugins: list[str] = field(default_factory=list)  # ["hrx::SelectiveScan", ...] built as plugins
    plugin_impl: str = ""  # "jit" (Python + Triton at run time) or "aot" (PTX inside the engine)
    fp32_islands: dict[str, int] = field(default_factory=dict)  # the graph's FP32 islands: rule -> node count
    hrx_version: str = ""
    built_at: str = ""
    schema: int = RECORD_SCHEMA
    engine_sha256: str = ""  # the engine file this record describes (checked on load; empty in older records)

    def info(self) -> ModelInfo:
        """The model's :class:`ModelInfo` as recorded at build time."""
        return ModelInfo.from_props(self.model_info, source="engine record")

    def to_json(self) -> str:
        """The record as indented JSON, keys sorted."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "engine record") -> "EngineRecord":
        """Parse a record; one-line :class:`HRXError` naming ``source`` when it is not one."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise HRXError(f"{source}: not valid JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(data, dict):
            raise HRXError(f"{source}: not an engine record")
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise HRXError(f"{source}: engine record lacks {', '.join(missing)}")
        record = cls(**{k: v for k, v in data.items() if k in names})
        record.check(source)
        return record

    def check(self, source: str) -> None:
        """Every field of the type and range an engine build writes; one line naming the file and key."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("input_shape", "output_shape"):
                if not isinstance(value, list) or not 1 <= len(value) <= 8:
                    raise HRXError(f"{source}: key {f.name!r} is not a list of 1 to 8 sizes")
                for d in value:
                    bounded_int(d, (-1, 1 << 20), source, f.name)
            elif f.name in ("model_info", "fp32_islands"):
                if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                    raise HRXError(f"{source}: key {f.name!r} is not an object")
            elif f.name == "plugins":
                if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
                    raise HRXError(f"{source}: key 'plugins' is not a list of names")
            elif f.name == "schema":
                bounded_int(value, (1, RECORD_SCHEMA), source, "schema")
            elif not isinstance(value, str):
                raise HRXError(f"{source}: key {f.name!r} is not text")
        if self.model_info:
            ModelInfo.from_props({k: str(v) for k, v in self.model_info.items()}, source)


@dataclass(frozen=True)
class RuntimeEnv:
    """What an engine must match: TensorRT version and GPU."""

    tensorrt_version: str
    gpu: GpuInfo


def current_env() -> RuntimeEnv:
    """This machine's TensorRT and GPU (raises MissingDependencyError without them)."""
    from hrx.runtime.trt.env import require_gpu, require_tensorrt

    trt = require_tensorrt()
    return RuntimeEnv(str(trt.__version__), require_gpu())


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """The record file beside an engine: ``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def now_iso() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def write_record(engine_path: str | os.PathLike, record: EngineRecord) -> Path:
    """Write ``record`` beside ``engine_path`` atomically; returns its path."""
    side = sidecar_path(engine_path)
    atomic_write_bytes(side, record.to_json().encode())
    return side


def write_engine(engine_path: str | os.PathLike, engine: bytes, record: EngineRecord) -> EngineRecord:
    """Write an engine and its record as a pair: the record carries the engine's sha256; both are written
    and flushed to temporary files before either replaces the old pair (record first), so a failed write
    leaves the old pair intact, and a reader that finds a record of another engine says so
    (:func:`check_engine`)."""
    record = dataclasses.replace(record, engine_sha256=hashlib.sha256(engine).hexdigest())
    atomic_write_all([(sidecar_path(engine_path), record.to_json().encode()), (engine_path, engine)])
    return record


def read_record(engine_path: str | os.PathLike) -> EngineRecord:
    """The build record beside ``engine_path``; one-line :class:`HRXError` when it is missing or unreadable."""
    side = sidecar_path(engine_path)
    if not side.is_file():
        raise HRXError(f"{engine_path}: no build record ({side.name} is missing), so it cannot be checked "
                       f"against this machine; rebuild it: {rebuild_command(None, 'fp16', engine_path)}")
    return EngineRecord.from_json(side.read_text(), source=str(side))


def rebuild_command(onnx_path: str | os.PathLike | None, precision: str,
                    engine_path: str | os.PathLike | None = None, plugin_impl: str = "") -> str:
    """The ``hrx build`` command line that rebuilds an engine in ``precision``."""
    parts = ["hrx build", str(onnx_path) if onnx_path else "MODEL.onnx", _PRECISION_FLAG.get(precision, "")]
    if plugin_impl == "aot":
        parts.append("--plugin-impl aot")
    if engine_path is not None:
        parts.append(f"-o {engine_path}")
    return " ".join(p for p in parts if p)


def mismatches(record: EngineRecord, env: RuntimeEnv) -> tuple[list[str], list[str]]:
    """(errors, warnings): why the engine cannot run here, and what merely costs speed."""
    errors: list[str] = []
    warnings: list[str] = []
    if record.tensorrt_version != env.tensorrt_version:
        errors.append(f"it was built with TensorRT {record.tensorrt_version} but TensorRT {env.tensorrt_version} "
                      f"is installed (an engine runs only on the TensorRT version that built it)")
    if record.compute_capability != env.gpu.compute_capability:
        errors.append(f"it was built for {record.gpu_name} (compute capability {record.compute_capability}) "
                      f"but this GPU is {env.gpu.name} ({env.gpu.compute_capability})")
    elif record.gpu_name != env.gpu.name:
        warnings.append(f"it was built on {record.gpu_name} and runs on {env.gpu.name} (same compute capability "
                        f"{env.gpu.compute_capability}): it works, but a rebuild tunes it for this GPU")
    return errors, warnings


def check_engine(engine_path: str | os.PathLike, *, env: RuntimeEnv | None = None,
                 onnx_path: str | os.PathLike | None = None,
                 engine: bytes | None = None) -> tuple[EngineRecord, list[str]]:
    """Read the engine's record and check it against this machine (and ``onnx_path`` if given), and that
    it is the record of this engine (its sha256; ``engine``: the bytes the caller read and will load).

    Returns ``(record, warnings)``; raises :class:`EngineMismatchError` with one line that says
    why and the ``hrx build`` command that rebuilds the engine.
    """
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise HRXError(f"{engine_path}: no such engine file")
    record = read_record(engine_path)
    if record.engine_sha256:
        sha = hashlib.sha256(engine if engine is not None else engine_path.read_bytes()).hexdigest()
        if sha != record.engine_sha256:
            raise EngineMismatchError(
                f"{engine_path}: its record {sidecar_path(engine_path).name} describes another engine (sha256 "
                f"{record.engine_sha256[:12]}… there, {sha[:12]}… here: an interrupted build or a copied file). "
                f"Rebuild it: {rebuild_command(onnx_path or record.onnx_path, record.precision, engine_path, record.plugin_impl)}")
    env = env or current_env()
    errors, warnings = mismatches(record, env)
    source = onnx_path or record.onnx_path
    if onnx_path is not None:
        if not Path(onnx_path).is_file():
            raise HRXError(f"{onnx_path}: no such file")
        sha = file_sha256(onnx_path)
        if sha != record.onnx_sha256:
            errors.append(f"{onnx_path} changed since the engine was built "
                          f"(sha256 {record.onnx_sha256[:12]}… then, {sha[:12]}… now)")
    if errors:
        raise EngineMismatchError(f"{engine_path} cannot be used: {'; '.join(errors)}. Rebuild it: "
                                  f"{rebuild_command(source, record.precision, engine_path, record.plugin_impl)}")
    return record, [f"{engine_path}: {w}" for w in warnings]


def cache_key(onnx_sha256: str, precision: str, env: RuntimeEnv, plugin_impl: str = "") -> str:
    """``<sha16>-<precision>-trt<version>-<gpu>-sm<cc>``: one engine per model, precision, TensorRT and GPU."""
    precision = normalize_precision(precision)
    impl = f"-{plugin_impl}" if plugin_impl == "aot" else ""
    cc = env.gpu.compute_capability.replace(".", "")
    return f"{onnx_sha256[:16]}-{precision}{impl}-trt{env.tensorrt_version}-{env.gpu.slug}-sm{cc}"


def cached_engine_for(onnx_path: str | os.PathLike, precision: str = "fp16", *, env: RuntimeEnv | None = None,
                      root: str | os.PathLike | None = None, plugin_impl: str = "") -> Path:
    """Where the cached engine for this ONNX file, precision, TensorRT version and GPU lives."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise HRXError(f"{onnx_path}: no such file")
    env = env or current_env()
    key = cache_key(file_sha256(onnx_path), precision, env, plugin_impl)
    return Path(root or cache_root()) / "engines" / f"{onnx_path.stem}-{key}.engine"
