"""``hrx triton-repo``: a Triton Inference Server model repository for an HRX export.

Layout (what ``tritonserver --model-repository repo/`` loads)::

    repo/<name>/config.pbtxt
    repo/<name>/1/model.onnx      (backend "onnxruntime", from an ``hrx export`` .onnx)
    repo/<name>/1/model.plan      (backend "tensorrt", from an ``hrx build`` .engine and its record)

Input and output names, dtypes and dims come from the graph (the ONNX file, or the engine's build record).
A dynamic batch axis (``hrx export --batch dynamic``) becomes ``max_batch_size`` (the metadata's
``max_batch``) plus ``dynamic_batching``, with per-request dims ``[C, tile, tile]``; a static batch gives
``max_batch_size: 0`` and the full dims. HRX's metadata goes under ``parameters`` with an ``hrx_`` prefix, so
a client (:mod:`hrx.runtime.inference_server`) can tile with nothing but the server. A ``.plan`` is listed under
``cc_model_filenames`` with the compute capability it was built for.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from hrx.errors import HRXError
from hrx.export.onnx_tools import metadata
from hrx.interface import ModelInfo, load_onnx

PARAM_PREFIX = "hrx_"
QUEUE_DELAY_US = 2000  # how long Triton waits to merge requests into one batch
# ONNX TensorProto element types -> Triton data types
_ONNX_DTYPES = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 11: "TYPE_FP64", 2: "TYPE_UINT8", 3: "TYPE_INT8",
                6: "TYPE_INT32", 7: "TYPE_INT64"}
_IO_DTYPES = {"fp32": "TYPE_FP32", "fp16": "TYPE_FP16", "bf16": "TYPE_BF16"}  # metadata io_precision -> Triton
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_SKIP_PROPS = {"hrx_bisect_map"}  # large, and only `hrx verify --bisect` needs it


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton TYPE_*
    dims: list[int]  # without the batch axis when the model batches (max_batch_size > 0)


@dataclass(frozen=True)
class RepoModel:
    name: str
    backend: str  # "onnxruntime" or "tensorrt"
    max_batch_size: int  # 0: no batch axis handled by Triton (dims are the full static shape)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    info: ModelInfo
    instances: int = 1
    kind: str = ""  # "", "KIND_GPU" or "KIND_CPU" ("": Triton picks, GPU when there is one)
    compute_capability: str = ""  # for .plan files
    queue_delay_us: int = QUEUE_DELAY_US

    @property
    def filename(self) -> str:
        """The file name Triton expects: ``model.plan`` for TensorRT, else ``model.onnx``."""
        return "model.plan" if self.backend == "tensorrt" else "model.onnx"


def model_parameters(info: ModelInfo) -> dict[str, str]:
    """HRX's metadata as Triton ``parameters`` (``hrx_scale``, ``hrx_tile``, ...)."""
    return {PARAM_PREFIX + k: v for k, v in info.to_props().items() if k not in _SKIP_PROPS and v != ""}


def info_from_parameters(parameters: dict[str, str], source: str) -> ModelInfo:
    """The inverse of :func:`model_parameters` (what the Triton client reads back)."""
    props = {k[len(PARAM_PREFIX):]: v for k, v in parameters.items() if k.startswith(PARAM_PREFIX)}
    if not props:
        raise HRXError(f"{source}: the model config has no hrx_* parameters; make its repository with "
                       "`hrx triton-repo` (or serve it with HRX's metadata)")
    return ModelInfo.from_props(props, source)


def _dims(shape) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def describe_onnx(path: Path, name: str, instances: int, kind: str) -> RepoModel:
    """Names, dtypes and dims from the ONNX graph; batching from its first axis."""
    model = load_onnx(path, load_external_data=False)
    info = ModelInfo.from_props(metadata(model), str(path))
    initializers = {t.name for t in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in initializers], list(model.graph.output)
    shapes = [[_dims(v.type.tensor_type.shape) for v in group] for group in values]
    dynamic = [isinstance(s[0], str) for group in shapes for s in group if s]
    if not dynamic or any(dynamic) != all(dynamic):
        raise HRXError(f"{path}: inputs and outputs disagree on a batch axis; re-export it with `hrx export`")
    batching = all(dynamic)
    specs: list[list[TensorSpec]] = []
    for group, group_shapes in zip(values, shapes):
        specs.append([])
        for v, dims in zip(group, group_shapes):
            dims = dims[1:] if batching else dims
            if any(not isinstance(d, int) for d in dims):
                raise HRXError(f"{path}: {v.name} has dynamic dims {dims} besides the batch; Triton configs here "
                               "need a static tile (export with a fixed --tile)")
            elem = v.type.tensor_type.elem_type
            if elem not in _ONNX_DTYPES:
                raise HRXError(f"{path}: {v.name} has ONNX element type {elem}, which Triton does not serve")
            specs[-1].append(TensorSpec(v.name, _ONNX_DTYPES[elem], list(dims)))
    max_batch = int(info.extra.get("max_batch", "0")) if batching else 0
    if batching and max_batch < 1:
        raise HRXError(f"{path}: the batch axis is dynamic but the metadata has no max_batch; re-export it with "
                       "`hrx export --batch dynamic`")
    return RepoModel(name, "onnxruntime", max_batch, specs[0], specs[1], info, instances, kind)


def describe_engine(path: Path, name: str, instances: int, kind: str) -> RepoModel:
    """Names, dims and I/O type from the engine's build record (TensorRT need not be installed to write the
    repo). The engine's input and output have the types of the graph it was built from: FP32, or FP16 for
    an ``hrx export --io fp16`` file (the metadata's ``io_precision``, which the record keeps)."""
    from hrx.runtime.trt.cache import read_record

    record = read_record(path)
    info = record.info()
    shapes = [list(record.input_shape), list(record.output_shape)]
    batching = record.input_shape[0] < 0 or info.extra.get("batch_axis") == "dynamic"
    max_batch = int(info.extra.get("max_batch", "0")) if batching else 0
    if batching:
        shapes = [s[1:] for s in shapes]
        if max_batch < 1:
            raise HRXError(f"{path}: a dynamic-batch engine whose record has no max_batch; rebuild it with hrx build")
    if any(d < 0 for s in shapes for d in s):
        raise HRXError(f"{path}: only the batch axis may be dynamic (record: input {record.input_shape})")
    io = info.extra.get("io_precision", "fp32")
    if io not in _IO_DTYPES:
        raise HRXError(f"{path}: its record names I/O precision {io!r}; expected one of {', '.join(_IO_DTYPES)}")
    dtype = _IO_DTYPES[io]
    return RepoModel(name, "tensorrt", max_batch, [TensorSpec(record.input_name, dtype, shapes[0])],
                     [TensorSpec(record.output_name, dtype, shapes[1])], info, instances, kind or "KIND_GPU",
                     record.compute_capability)


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def config_pbtxt(model: RepoModel) -> str:
    """The ``config.pbtxt`` text (protobuf text format of Triton's ``ModelConfig``)."""

    def tensors(field: str, specs: list[TensorSpec]) -> list[str]:
        lines = [f"{field} ["]
        for k, t in enumerate(specs):
            comma = "," if k + 1 < len(specs) else ""
            lines.append(f"  {{ name: {_q(t.name)} data_type: {t.dtype} dims: [ {', '.join(map(str, t.dims))} ] }}{comma}")
        return lines + ["]"]

    lines = [f"name: {_q(model.name)}", f"backend: {_q(model.backend)}", f"max_batch_size: {model.max_batch_size}"]
    lines += tensors("input", model.inputs) + tensors("output", model.outputs)
    if model.max_batch_size > 0:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {model.queue_delay_us} }}")
    kind = f" kind: {model.kind}" if model.kind else ""
    lines.append(f"instance_group [ {{ count: {model.instances}{kind} }} ]")
    if model.compute_capability:
        lines.append(f"cc_model_filenames {{ key: {_q(model.compute_capability)} value: {_q(model.filename)} }}")
    for key, value in sorted(model_parameters(model.info).items()):
        lines.append(f"parameters {{ key: {_q(key)} value: {{ string_value: {_q(value)} }} }}")
    return "\n".join(lines) + "\n"


def write_repository(source: str | os.PathLike, repo: str | os.PathLike, name: str | None = None,
                     instances: int = 1, kind: str = "") -> Path:
    """Write ``repo/<name>/config.pbtxt`` and ``repo/<name>/1/model.onnx|model.plan``; returns the model folder.

    The model file is copied first and the config written last (each atomically), so a server polling the
    repository never sees a config without its model."""
    from hrx.paths import atomic_write

    source = Path(source)
    if not source.is_file():
        raise HRXError(f"{source}: no such model file")
    name = name or source.name.split(".")[0]
    if not _NAME.match(name):
        raise HRXError(f"model name {name!r}: use letters, digits, '_', '-' and '.' only")
    if instances < 1:
        raise HRXError(f"--instances must be at least 1, not {instances}")
    if kind not in ("", "KIND_GPU", "KIND_CPU"):
        raise HRXError(f"instance kind {kind!r}: choose KIND_GPU, KIND_CPU or leave it to Triton")
    suffix = source.suffix.lower()
    if suffix == ".onnx":
        model = describe_onnx(source, name, instances, kind)
    elif suffix in (".engine", ".plan"):
        model = describe_engine(source, name, instances, kind)
    else:
        raise HRXError(f"{source}: expected an .onnx from `hrx export` or an .engine / .plan from `hrx build`")
    folder = Path(repo) / name
    if folder.exists() and not (folder / "config.pbtxt").is_file():
        raise HRXError(f"{folder}: exists and is not a Triton model folder; choose another -o or --name")
    (folder / "1").mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "1" / model.filename, lambda tmp: shutil.copyfile(source, tmp))
    text = config_pbtxt(model)
    atomic_write(folder / "config.pbtxt", lambda tmp: Path(tmp).write_text(text))
    return folder
