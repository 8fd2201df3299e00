"""``hrx build``: ONNX -> TensorRT engine (+ its :class:`~hrx.runtime.trt.cache.EngineRecord`).

Steps (TensorRT 10.x Python API: ``trt.Builder``, ``OnnxParser``, ``IBuilderConfig``):

1. Load the ONNX file; if it has ``hrx::`` nodes and plugins are wanted, register the plugins
   (:func:`hrx.runtime.trt.plugins.register_plugins`) and drop the nodes' local functions so the
   parser maps each node to its plugin; with ``plugins=False`` inline the functions instead.
2. Parse; set precision flags: ``fp16`` -> ``BuilderFlag.FP16``; ``int8`` -> ``INT8`` + ``FP16``
   and requires a QDQ model from ``hrx calibrate`` (explicit quantization: TensorRT takes the
   scales from the Q/DQ nodes; a QDQ model is built as INT8 even without ``--int8``); ``best``
   -> FP16 (+ BF16 where the GPU has it) + INT8 if the model is QDQ.
3. FP16 safety: in builds that allow FP16, layers that overflow in half precision are pinned to
   FP32 with ``ILayer.precision``/``set_output_type`` and ``OBEY_PRECISION_CONSTRAINTS``:
   softmax layers and the layers that feed them (including a ``MoETop1`` plugin's logits),
   reductions and normalization layers (norm statistics), ``exp``/``log``/``sqrt``/``pow`` and
   cumulative sums (the scan's decays). The pinned layers are listed in the build summary.
4. Build with an optional workspace limit and timing cache, serialize, write engine + sidecar
   through temporary files (nothing is left behind on failure).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from hrx.errors import HRXError
from hrx.runtime.trt.cache import (
    EngineRecord,
    atomic_write_bytes,
    file_sha256,
    now_iso,
    sidecar_path,
    write_record,
)
from hrx.runtime.trt.plugins import PLUGIN_DOMAIN, check_plugin_impl

Log = Callable[[str], None]

# Layer kinds pinned to FP32 in FP16 builds ("TYPE" or "TYPE:OP", TensorRT LayerType names).
FP32_KINDS = frozenset({
    "SOFTMAX", "REDUCE", "NORMALIZATION", "CUMULATIVE",
    "UNARY:EXP", "UNARY:LOG", "UNARY:SQRT", "ELEMENTWISE:POW",
})
# Layer kinds whose producers (of the given input) are pinned too: what feeds a softmax.
FP32_PRODUCERS = {"SOFTMAX": 0, "PLUGIN:MoETop1": 0}
# Layer names (= ONNX node names) pinned regardless of kind.
FP32_NAME_PATTERN = re.compile(r"(?i)(softmax|layernorm|segsum|cumsum)")
# Cheap layers that follow pinned inputs into FP32; producers that do not count as inputs.
_FP32_FOLLOWERS = ("ELEMENTWISE", "UNARY", "SHUFFLE", "SELECT")
_NEUTRAL = frozenset({"CONSTANT", "SHAPE"})
_FLOAT_PRECISIONS = ("FP32", "FP16", "BF16", "INT8", "FP8", "INT32", "INT64", "BOOL", "UINT8", "INT4", "FP4")


@dataclass
class BuildOptions:
    fp16: bool = False
    int8: bool = False  # needs a QDQ model (hrx calibrate)
    best: bool = False
    workspace_gb: float | None = None  # builder workspace limit (None: TensorRT's default, all GPU memory)
    timing_cache: Path | None = None  # read if present, written back after the build
    plugins: bool | None = None  # None: plugins for hrx:: nodes when present; False: standard-op decomposition
    plugin_impl: str = "jit"  # "jit" (Python + Triton at run time) or "aot" (PTX in the engine, TensorRT >= 10.9)
    pin_fp32: bool = True  # pin overflow-prone layers to FP32 in builds that allow FP16
    verbose: bool = False


@dataclass
class BuildReport:
    engine_path: Path
    record: EngineRecord
    seconds: float
    precision_counts: dict[str, int] = field(default_factory=dict)  # layers of the built engine by output type
    fp32_layers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        r = self.record
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.precision_counts.items(), key=lambda kv: -kv[1]))
        lines = [
            f"built {self.engine_path} in {self.seconds:.1f} s ({r.precision}, TensorRT {r.tensorrt_version}, "
            f"{r.gpu_name}, sm {r.compute_capability})",
            f"  input {r.input_name} {r.input_shape} -> output {r.output_name} {r.output_shape}",
            f"  layer precisions: {counts or 'unavailable'}",
        ]
        if r.plugins:
            lines.append(f"  plugins: {', '.join(r.plugins)} ({r.plugin_impl})")
        if self.fp32_layers:
            shown = ", ".join(self.fp32_layers[:8]) + (f", … ({len(self.fp32_layers)} in all)"
                                                       if len(self.fp32_layers) > 8 else "")
            lines.append(f"  pinned to FP32 for FP16 safety: {shown}")
        lines += [f"  note: {n}" for n in self.notes]
        return lines


# --- pure helpers (tested without TensorRT) ------------------------------------------------------

def is_qdq(model) -> bool:
    """Whether the graph carries explicit quantization (QuantizeLinear/DequantizeLinear)."""
    ops = {n.op_type for n in model.graph.node} | {n.op_type for f in model.functions for n in f.node}
    return bool(ops & {"QuantizeLinear", "DequantizeLinear"})


def resolve_precision(options: BuildOptions, qdq: bool) -> tuple[str, list[str]]:
    """(precision name, notes) for the flags and the model; raises on --int8 without Q/DQ."""
    notes: list[str] = []
    if options.best:
        return "best", notes
    if options.int8 and not qdq:
        raise HRXError("--int8 needs a quantized (Q/DQ) model from `hrx calibrate`; this model has no "
                       "QuantizeLinear/DequantizeLinear nodes. Build it with --fp16, or calibrate it first")
    if qdq:
        if not options.int8:
            notes.append("Q/DQ model: built as INT8 with its explicit scales")
        return "int8", notes
    return ("fp16" if options.fp16 else "fp32"), notes


def precision_flags(precision: str, qdq: bool) -> list[str]:
    """TensorRT BuilderFlag names for a precision."""
    return {
        "fp32": [],
        "fp16": ["FP16"],
        "int8": ["INT8", "FP16"],
        "best": ["FP16", "BF16"] + (["INT8"] if qdq else []),
    }[precision]


def options_for(precision: str) -> dict[str, bool]:
    """BuildOptions fields that select ``precision`` (the inverse of :func:`resolve_precision`)."""
    from hrx.runtime.trt.cache import normalize_precision

    flags = {"fp32": {}, "fp16": {"fp16": True}, "int8": {"int8": True}, "best": {"best": True}}
    return flags[normalize_precision(precision)]


@dataclass(frozen=True)
class LayerView:
    """What the FP16 pinning rules need to know about one network layer."""

    index: int
    name: str
    kind: str  # "SOFTMAX", "UNARY:EXP", "PLUGIN:MoETop1", ...
    input_producers: tuple[int | None, ...] = ()  # producing layer of each input (None: network input/constant)
    float_output: bool = True


def select_fp32_layers(layers: Sequence[LayerView]) -> list[int]:
    """Indices of the layers to pin to FP32 (sorted).

    Seeds: :data:`FP32_KINDS`, :data:`FP32_NAME_PATTERN`, and what computes the inputs named in
    :data:`FP32_PRODUCERS` (back through bias adds, scales and reshapes to the MatMul/Conv). Then
    cheap element-wise layers whose float inputs all come from pinned layers (or constants) join
    them, so a chain like ``ReduceMean -> Add(eps) -> Sqrt -> Reciprocal`` stays FP32 end to end
    instead of round-tripping through FP16 between pinned layers.
    """
    chosen: set[int] = set()
    for layer in layers:
        if not layer.float_output:
            continue
        if layer.kind in FP32_KINDS or FP32_NAME_PATTERN.search(layer.name):
            chosen.add(layer.index)
    for layer in layers:
        slot = FP32_PRODUCERS.get(layer.kind)
        if slot is not None and slot < len(layer.input_producers):
            _pin_upstream(layers, layer.input_producers[slot], chosen)
    changed = True
    while changed:
        changed = False
        for layer in layers:
            if layer.index in chosen or not layer.float_output or not layer.kind.startswith(_FP32_FOLLOWERS):
                continue
            sources = [p for p in layer.input_producers if p is not None and layers[p].kind not in _NEUTRAL]
            if sources and all(p in chosen for p in sources):
                chosen.add(layer.index)
                changed = True
    return sorted(chosen)


def _pin_upstream(layers: Sequence[LayerView], start: int | None, chosen: set[int], depth: int = 6) -> None:
    """Pin what computes a softmax input: back through cheap layers (bias adds, scales, reshapes)
    to, and including, the first heavy layer (the QK^T MatMul, the router's Conv)."""
    if start is None or depth == 0:
        return
    layer = layers[start]
    if layer.kind in _NEUTRAL or not layer.float_output:
        return
    chosen.add(start)
    if layer.kind.startswith(_FP32_FOLLOWERS):
        for p in layer.input_producers:
            _pin_upstream(layers, p, chosen, depth - 1)


def precision_counts(engine_info: dict[str, Any]) -> dict[str, int]:
    """Count the built engine's layers by output data type (engine inspector JSON, DETAILED)."""
    counts: dict[str, int] = {}
    for layer in engine_info.get("Layers", []):
        if not isinstance(layer, dict) or layer.get("LayerType") == "Reformat":
            continue
        outputs = layer.get("Outputs") or []
        text = str(outputs[0].get("Format/Datatype", "")) if outputs and isinstance(outputs[0], dict) else ""
        match = re.search(r"\b(" + "|".join(_FLOAT_PRECISIONS) + r")\b", text.upper())
        key = match.group(1) if match else "other"
        counts[key] = counts.get(key, 0) + 1
    return counts


def default_engine_path(onnx_path: str | os.PathLike) -> Path:
    return Path(onnx_path).with_suffix(".engine")


# --- TensorRT glue -----------------------------------------------------------------------------------

def _layer_views(trt, network, plugin_nodes: dict[str, str]) -> list[LayerView]:
    casts = {trt.LayerType.UNARY: trt.IUnaryLayer, trt.LayerType.ELEMENTWISE: trt.IElementWiseLayer}
    producers: dict[str, int] = {}
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    for i, layer in enumerate(layers):
        for j in range(layer.num_outputs):
            producers[layer.get_output(j).name] = i
    views = []
    for i, layer in enumerate(layers):
        kind = layer.type.name
        if layer.type in casts:
            layer.__class__ = casts[layer.type]  # TensorRT's Python idiom for a layer downcast
            kind = f"{kind}:{layer.op.name}"
        elif kind.startswith("PLUGIN") and layer.name in plugin_nodes:
            kind = f"PLUGIN:{plugin_nodes[layer.name]}"
        inputs = tuple(producers.get(layer.get_input(j).name) if layer.get_input(j) is not None else None
                       for j in range(layer.num_inputs))
        float_out = layer.num_outputs > 0 and all(layer.get_output(j).dtype in (trt.float32, trt.float16)
                                                  for j in range(layer.num_outputs))
        views.append(LayerView(i, layer.name, kind, inputs, float_out))
    return views


def _pin_fp32(trt, network, indices: Iterable[int]) -> list[str]:
    names = []
    for i in indices:
        layer = network.get_layer(i)
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        names.append(layer.name)
    return names


def _make_logger(trt, verbose: bool, log: Log):
    class _Logger(trt.ILogger):
        """Keeps TensorRT's messages; prints warnings and errors only when verbose."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:  # noqa: A003 - TensorRT's method name
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(str(msg))
            if verbose and int(severity) <= int(trt.ILogger.Severity.WARNING):
                log(f"[TensorRT] {msg}")

    return _Logger()


def _parser_error(parser, source: str) -> HRXError:
    errs = [parser.get_error(i) for i in range(parser.num_errors)]
    if not errs:
        return HRXError(f"{source}: TensorRT could not parse the model")
    first = errs[0]
    where = ""
    try:
        if first.node_name() or first.node_operator():
            where = f" (node {first.node_name()!r}, {first.node_operator()})"
    except AttributeError:  # older bindings
        pass
    desc = " ".join(str(first.desc()).split())
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return HRXError(f"{source}: TensorRT could not parse the model: {desc}{where}{more}")


def _set_flag(trt, config, name: str) -> None:
    flag = getattr(trt.BuilderFlag, name, None)
    if flag is None:
        raise HRXError(f"TensorRT {trt.__version__} has no BuilderFlag.{name} (TensorRT 11 removed weak typing); "
                       "use TensorRT 10.x (pip install 'tensorrt>=10.7,<11') for --fp16/--int8/--best")
    config.set_flag(flag)


def _network_flags(trt, use_plugins: bool, impl: str) -> int:
    flags = 0
    if not use_plugins:
        return flags
    name = "PREFER_AOT_PYTHON_PLUGINS" if impl == "aot" else "PREFER_JIT_PYTHON_PLUGINS"
    flag = getattr(trt.NetworkDefinitionCreationFlag, name, None)
    if flag is None:
        if impl == "aot":
            raise HRXError(f"--plugin-impl aot needs TensorRT >= 10.9 (this is {trt.__version__})")
        return flags  # before 10.9 a plugin has only its JIT implementation
    return flags | (1 << int(flag))


def _io(network) -> tuple[str, list[int], str, list[int]]:
    if network.num_inputs != 1 or network.num_outputs != 1:
        raise HRXError(f"expected one input and one output, the network has {network.num_inputs} and "
                       f"{network.num_outputs}")
    i, o = network.get_input(0), network.get_output(0)
    shape_in, shape_out = [int(d) for d in i.shape], [int(d) for d in o.shape]
    if any(d < 0 for d in shape_in):
        raise HRXError(f"input {i.name} has dynamic shape {shape_in}; export with a fixed tile and batch")
    return i.name, shape_in, o.name, shape_out


def _model_info(path: Path) -> tuple[dict[str, str], list[str]]:
    from hrx.runtime.model_info import ModelInfo

    try:
        return ModelInfo.from_onnx(path).to_props(), []
    except HRXError:
        return {}, ["not an HRX export: the engine has no tiling metadata (hrx upscale cannot use it)"]


def build_engine(onnx_path: str | os.PathLike, output: str | os.PathLike | None = None,
                 options: BuildOptions | None = None, *, log: Log | None = None, **overrides: Any) -> BuildReport:
    """Build a TensorRT engine from ``onnx_path`` and write it (and its record) to ``output``.

    ``overrides`` are :class:`BuildOptions` fields, e.g. ``build_engine("m.onnx", fp16=True)``.
    Raises MissingDependencyError without TensorRT or a GPU, HRXError for bad input or a failed
    build; on any failure no engine, record or timing cache is written.
    """
    import onnx

    from hrx import __version__
    from hrx.runtime.model_info import load_onnx
    from hrx.runtime.trt import ops as trt_ops
    from hrx.runtime.trt.env import require_gpu, require_tensorrt
    from hrx.runtime.trt.plugins import plugin_nodes, register_plugins, strip_plugin_functions

    opts = dataclasses.replace(options or BuildOptions(), **overrides)
    check_plugin_impl(opts.plugin_impl)
    log = log or (lambda _msg: None)
    src = Path(onnx_path)
    if not src.is_file():
        raise HRXError(f"{src}: no such ONNX file")
    out = Path(output) if output is not None else default_engine_path(src)
    if out.resolve() == src.resolve():
        raise HRXError(f"{out}: the engine would overwrite the ONNX file; choose another -o")
    if out.is_dir():
        raise HRXError(f"{out}: is a folder; give -o an engine file name")
    model = load_onnx(src)
    qdq = is_qdq(model)
    precision, notes = resolve_precision(opts, qdq)
    hrx_nodes = {n.name: n.op_type for n in plugin_nodes(model)}
    use_plugins = bool(hrx_nodes) and opts.plugins is not False
    if use_plugins:
        from hrx.runtime.trt.plugins import contract_problems

        problems = contract_problems(model)
        if problems:
            raise HRXError(f"{src}: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
    trt = require_tensorrt(what="hrx build")
    gpu = require_gpu(what="hrx build")
    if use_plugins:
        from hrx.runtime.trt.env import triton_problem

        reason = triton_problem()
        if reason is not None:
            from hrx.errors import MissingDependencyError

            raise MissingDependencyError(f"the hrx plugins need Triton and PyTorch CUDA: {reason}; or build the "
                                         "standard-op decomposition with --no-plugins")
        register_plugins()
        parsed_model = strip_plugin_functions(model)
    elif hrx_nodes:
        import onnx.inliner

        parsed_model = onnx.inliner.inline_local_functions(model)
        notes.append("hrx:: ops built from their standard-op decomposition (--no-plugins)")
    else:
        parsed_model = model
    unsupported = trt_ops.unsupported_ops(parsed_model, plugins=use_plugins)
    if unsupported:
        notes.append(f"ops missing from TensorRT {trt_ops.supported_ops().source['tensorrt_version']}'s ONNX "
                     f"operator list: {', '.join(unsupported)}")
    model_props, info_notes = _model_info(src)
    notes += info_notes

    logger = _make_logger(trt, opts.verbose, log)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, use_plugins, opts.plugin_impl))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(parsed_model.SerializeToString(), str(src)):
        raise _parser_error(parser, str(src))
    in_name, in_shape, out_name, out_shape = _io(network)

    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if opts.workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * (1 << 30)))
    for name in precision_flags(precision, qdq):
        if name == "BF16" and not hasattr(trt.BuilderFlag, "BF16"):
            continue
        _set_flag(trt, config, name)
    fp32_layers: list[str] = []
    if opts.pin_fp32 and precision != "fp32":
        fp32_layers = _pin_fp32(trt, network, select_fp32_layers(_layer_views(trt, network, hrx_nodes)))
        if fp32_layers:
            _set_flag(trt, config, "OBEY_PRECISION_CONSTRAINTS")
    cache = None
    if opts.timing_cache is not None:
        data = Path(opts.timing_cache).read_bytes() if Path(opts.timing_cache).is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)

    log(f"building {src.name} ({precision}) on {gpu.name} with TensorRT {trt.__version__} ...")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        last = f": {logger.errors[-1]}" if logger.errors else " (run with --verbose for TensorRT's log)"
        raise HRXError(f"TensorRT failed to build {src}{last}")

    counts = _engine_precision_counts(trt, serialized, logger)
    record = EngineRecord(
        onnx_sha256=file_sha256(src), onnx_path=str(src.resolve()), precision=precision,
        tensorrt_version=str(trt.__version__), gpu_name=gpu.name, compute_capability=gpu.compute_capability,
        input_name=in_name, input_shape=in_shape, output_name=out_name, output_shape=out_shape,
        model_info=model_props, plugins=sorted({f"{PLUGIN_DOMAIN}::{op}" for op in hrx_nodes.values()})
        if use_plugins else [], plugin_impl=opts.plugin_impl if use_plugins else "", fp32_layers=fp32_layers,
        hrx_version=__version__, built_at=now_iso())
    atomic_write_bytes(out, bytes(serialized))
    try:
        write_record(out, record)
        if cache is not None:
            atomic_write_bytes(opts.timing_cache, bytes(config.get_timing_cache().serialize()))
    except BaseException:
        out.unlink(missing_ok=True)
        sidecar_path(out).unlink(missing_ok=True)
        raise
    return BuildReport(out, record, seconds, counts, fp32_layers, notes)


def _engine_precision_counts(trt, serialized, logger) -> dict[str, int]:
    try:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(serialized)
        inspector = engine.create_engine_inspector()
        return precision_counts(json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON)))
    except Exception:  # noqa: BLE001 - the counts are informative only
        return {}


def engine_for(onnx_path: str | os.PathLike, precision: str = "fp16", *, plugin_impl: str = "jit",
               root: str | os.PathLike | None = None, log: Log | None = None) -> Path:
    """The cached engine for ``onnx_path`` on this machine, built on first use (``--backend trt``)."""
    from hrx.runtime.trt.cache import cached_engine_for, check_engine, current_env

    from hrx.runtime.trt.cache import normalize_precision

    log = log or (lambda _msg: None)
    precision = normalize_precision(precision)
    env = current_env()
    path = cached_engine_for(onnx_path, precision, env=env, root=root, plugin_impl=plugin_impl)
    if path.is_file() and sidecar_path(path).is_file():
        try:
            check_engine(path, env=env, onnx_path=onnx_path)
            return path
        except HRXError as e:
            log(f"rebuilding the cached engine: {e}")
    report = build_engine(onnx_path, path, BuildOptions(plugin_impl=plugin_impl, **options_for(precision)), log=log)
    for line in report.summary_lines():
        log(line)
    return path
