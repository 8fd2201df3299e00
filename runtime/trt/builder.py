"""``hrx build``: ONNX -> TensorRT engine (+ its :class:`~hrx.runtime.trt.cache.EngineRecord`).

One strongly typed path for TensorRT 10.12+ and 11.x: every tensor's type comes from the ONNX
graph (its Casts and Q/DQ nodes), so the builder sets no precision flag, no precision constraint
and no per-layer type (TensorRT 11 removed the FP16/INT8/BF16 builder flags, the obey/prefer
precision-constraint flags, and the layers' precision and output-type setters).

1. Load the ONNX file. ``--fp16``/``--bf16`` on an FP32 graph convert it first with the FP32
   islands of :mod:`hrx.export.precision` (the same conversion as ``hrx export --precision``);
   an FP16/BF16 export or a Q/DQ model from ``hrx calibrate`` builds as it is.
2. Plugins: register ``hrx::`` plugins and drop their local functions so the parser maps each
   node to its plugin; ``--no-plugins`` inlines the functions instead.
3. Parse into a network created with ``STRONGLY_TYPED`` (10.x; 11.x networks are always strongly
   typed) and the JIT/AOT plugin preference; build; deserialize the engine once (an engine that
   cannot be loaded fails the build) and read the layer types from its inspector JSON (10.x and
   11.x schemas); write the engine and its record through temporary files.

Polygraphy's loaders (``NetworkFromOnnxBytes(strongly_typed=True)``, ``CreateConfig``,
``EngineBytesFromNetwork``, ``SaveEngine``) were considered: its ``CreateNetwork`` cannot add the
``PREFER_JIT/AOT_PYTHON_PLUGINS`` creation flags, its parser check logs the errors instead of
returning them (the one-line error naming the failing node needs them), and ``SaveEngine`` writes
in place (hrx writes atomically). The remaining hand-written TensorRT calls are the few below.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable

from hrx.errors import HRXError
from hrx.export.onnx_tools import (PLUGIN_DOMAIN, float_precision, graph_precision, is_qdq, metadata,
                                   normalize_precision)
from hrx.interface import parse_flag
from hrx.paths import atomic_write_bytes, file_sha256
from hrx.runtime.trt.cache import EngineRecord, now_iso, sidecar_path, write_engine
from hrx.runtime.trt.plugins import check_plugin_impl

if TYPE_CHECKING:
    import onnx

Log = Callable[[str], None]


@dataclass
class BuildOptions:
    fp16: bool = False  # FP32 graph: convert to FP16 with FP32 islands first
    bf16: bool = False  # FP32 graph: convert to BF16 with FP32 islands first (opset >= 22)
    int8: bool = False  # assert the model is Q/DQ (hrx calibrate); a Q/DQ model builds as it is anyway
    workspace_gb: float | None = None  # builder workspace limit (None: TensorRT's default, all GPU memory)
    timing_cache: Path | None = None  # read if present, written back after the build
    plugins: bool | None = None  # None: plugins for hrx:: nodes when present; False: standard-op decomposition
    plugin_impl: str = "jit"  # "jit" (Python + Triton at run time) or "aot" (PTX in the engine, TensorRT >= 10.9)
    verbose: bool = False
    batch_profile: tuple[int, int, int] | None = None  # min/opt/max batch of a `hrx export --batch dynamic` model


@dataclass
class BuildReport:
    engine_path: Path
    record: EngineRecord
    seconds: float
    precision_counts: dict[str, int] = field(default_factory=dict)  # layers of the built engine by output type
    notes: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        """The lines ``hrx build`` prints: engine, precision, layer types, notes."""
        r = self.record
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.precision_counts.items(), key=lambda kv: -kv[1]))
        lines = [
            f"built {self.engine_path} in {self.seconds:.1f} s ({r.precision}, strongly typed, TensorRT "
            f"{r.tensorrt_version}, {r.gpu_name}, sm {r.compute_capability})",
            f"  input {r.input_name} {r.input_shape} -> output {r.output_name} {r.output_shape}",
            f"  layer precisions: {counts or 'unavailable'}",
        ]
        if r.fp32_islands:
            lines.append("  FP32 islands in the graph: " + ", ".join(f"{k} {v}" for k, v in r.fp32_islands.items()))
        if r.plugins:
            lines.append(f"  plugins: {', '.join(r.plugins)} ({r.plugin_impl})")
        lines += [f"  note: {n}" for n in self.notes]
        return lines


# --- pure helpers (tested without TensorRT) ------------------------------------------------------

@dataclass(frozen=True)
class BuildPrecision:
    precision: str  # the record's precision: fp32, fp16, bf16 or int8
    convert_to: str | None  # fp16/bf16: convert the FP32 graph before building
    notes: tuple[str, ...] = ()


def resolve_precision(options: BuildOptions, model: onnx.ModelProto) -> BuildPrecision:
    """What the build makes of the flags and the graph. Raises on contradictions."""
    if options.fp16 and options.bf16:
        raise HRXError("--fp16 and --bf16 exclude each other")
    qdq = is_qdq(model)
    graph = float_precision(model)
    want = "fp16" if options.fp16 else "bf16" if options.bf16 else None
    if options.int8 and not qdq:
        raise HRXError("--int8 needs a quantized (Q/DQ) model from `hrx calibrate`; this model has no "
                       "QuantizeLinear/DequantizeLinear nodes. Build it with --fp16, or calibrate it first")
    if qdq:
        if want and graph != want:
            raise HRXError(f"a Q/DQ model builds with the types in its graph ({graph} outside the INT8 convs); for "
                           f"{want} there, calibrate with `hrx calibrate ... --precision {want}`")
        notes = [] if options.int8 else ["Q/DQ model: INT8 with its explicit scales"]
        return BuildPrecision("int8", None, tuple(notes + ([f"{graph} outside the Q/DQ convs"] if graph != "fp32"
                                                            else [])))
    if want is None:
        return BuildPrecision(graph, None)
    if graph == want:
        return BuildPrecision(graph, None, (f"the graph is already {graph}: built as it is",))
    if graph != "fp32":
        raise HRXError(f"--{want} on a {graph} graph: re-export the FP32 model with --precision {want}")
    return BuildPrecision(want, want, (f"converted to {want} with FP32 islands before building "
                                        "(as `hrx export --precision`)",))


def precision_for(model: onnx.ModelProto, requested: str = "auto") -> str:
    """The precision ``--backend trt`` builds an ONNX file in (the record's and the cache key's).

    ``auto`` reads the file: ``int8`` for a Q/DQ graph, the graph's own ``fp16``/``bf16`` types, and for an
    FP32 graph ``fp16`` unless its metadata declares ``fp16=False`` (an architecture known to misbehave in
    half), then ``fp32``. An explicit ``fp32``/``fp16``/``bf16``/``int8`` is what the user asked for;
    :func:`resolve_precision` refuses the ones the graph cannot build in, and so does ``fp32`` on a graph
    that is half or quantized already (it would build in the graph's types, not FP32)."""
    graph = graph_precision(model)
    if requested != "auto":
        want = normalize_precision(requested)
        if want == "fp32" and graph != "fp32":
            raise HRXError(f"--precision fp32 on a {graph} graph: TensorRT builds the types in the graph; "
                           "pass the FP32 export, or --precision auto")
        return want
    if graph != "fp32":
        return graph
    return "fp16" if parse_flag(metadata(model).get("fp16", "True")) else "fp32"


def options_for(precision: str) -> dict[str, bool]:
    """BuildOptions fields that select ``precision`` (``--backend trt`` builds)."""
    flags = {"fp32": {}, "fp16": {"fp16": True}, "bf16": {"bf16": True}, "int8": {"int8": True}}
    return flags[normalize_precision(precision)]


_TYPE_WORDS = (("BFLOAT16", "BF16"), ("BF16", "BF16"), ("FP16", "FP16"), ("HALF", "FP16"), ("FP32", "FP32"),
               ("FLOAT", "FP32"), ("FP8", "FP8"), ("INT8", "INT8"), ("INT32", "INT32"), ("INT64", "INT64"),
               ("BOOL", "BOOL"), ("UINT8", "UINT8"), ("INT4", "INT4"), ("FP4", "FP4"))


def _type_of(output: dict) -> str:
    """Output data type of one inspector layer output: TensorRT 11 has ``DataType`` ("Half",
    "Float", ...) beside ``Format``; 10.x writes one ``Format/Datatype`` string."""
    text = str(output.get("DataType") or output.get("Format/Datatype") or output.get("Format") or "").upper()
    for word in re.findall(r"[A-Z0-9]+", text):
        for key, name in _TYPE_WORDS:
            if word == key:
                return name
    return "other"


def precision_counts(engine_info: dict[str, Any]) -> dict[str, int]:
    """Count the built engine's layers by output data type (engine inspector JSON, DETAILED)."""
    counts: dict[str, int] = {}
    for layer in engine_info.get("Layers", []):
        if not isinstance(layer, dict) or layer.get("LayerType") == "Reformat":
            continue
        outputs = layer.get("Outputs") or []
        key = _type_of(outputs[0]) if outputs and isinstance(outputs[0], dict) else "other"
        counts[key] = counts.get(key, 0) + 1
    return counts


def default_engine_path(onnx_path: str | os.PathLike) -> Path:
    """``model.onnx`` -> ``model.engine`` beside it."""
    return Path(onnx_path).with_suffix(".engine")


# --- TensorRT glue -----------------------------------------------------------------------------------

def _make_logger(trt, verbose: bool, log: Log):
    class _Logger(trt.ILogger):
        """Keeps TensorRT's errors; prints warnings and errors only when verbose."""

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
    if first.node_name() or first.node_operator():
        where = f" (node {first.node_name()!r}, {first.node_operator()})"
    desc = " ".join(str(first.desc()).split())
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return HRXError(f"{source}: TensorRT could not parse the model: {desc}{where}{more}")


MIN_TENSORRT = (10, 12)


def _version(trt) -> tuple[int, int]:
    parts = (str(trt.__version__).split(".") + ["0"])[:2]
    return int(parts[0]), int(re.sub(r"\D.*", "", parts[1]) or 0)


def network_flags(trt: ModuleType, use_plugins: bool, impl: str) -> int:
    """STRONGLY_TYPED (TensorRT 10.12+; 11.x is strongly typed without it) and the plugin preference."""
    if _version(trt) < MIN_TENSORRT:
        raise HRXError(f"hrx build needs TensorRT >= 10.12 (strongly typed networks with the hrx plugins); this is "
                       f"{trt.__version__}: pip install 'hrx[tensorrt]'")
    flags = 0
    creation = trt.NetworkDefinitionCreationFlag
    strong = getattr(creation, "STRONGLY_TYPED", None)
    if strong is not None:  # TensorRT 10.x; 11.x networks are strongly typed without a flag
        flags |= 1 << int(strong)
    if not use_plugins:
        return flags
    name = "PREFER_AOT_PYTHON_PLUGINS" if impl == "aot" else "PREFER_JIT_PYTHON_PLUGINS"
    flag = getattr(creation, name, None)
    if flag is None:
        if impl == "aot":
            raise HRXError(f"--plugin-impl aot needs TensorRT >= 10.9 (this is {trt.__version__})")
        return flags  # before 10.9 a plugin has only its JIT implementation
    return flags | (1 << int(flag))


def _io(network) -> tuple[str, list[int], str, list[int]]:
    """Names and shapes of the one input and output; only the batch axis may be dynamic (-1)."""
    if network.num_inputs != 1 or network.num_outputs != 1:
        raise HRXError(f"expected one input and one output, the network has {network.num_inputs} and "
                       f"{network.num_outputs}")
    i, o = network.get_input(0), network.get_output(0)
    shape_in, shape_out = [int(d) for d in i.shape], [int(d) for d in o.shape]
    if any(d < 0 for d in shape_in[1:]):
        raise HRXError(f"input {i.name} has dynamic shape {shape_in}; export with a fixed tile (only the batch "
                       "may be dynamic: hrx export --batch dynamic)")
    return i.name, shape_in, o.name, shape_out


DEFAULT_BATCH_PROFILE = (1, 8, 32)  # min/opt/max tiles per call of a dynamic-batch engine, capped by max_batch


def batch_profile(requested: tuple[int, int, int] | None, model_props: dict[str, str]) -> tuple[int, int, int]:
    """The min/opt/max batch of the optimisation profile: ``requested`` or the default, within the export's
    ``max_batch``."""
    limit = int(model_props.get("max_batch", "0") or 0) or DEFAULT_BATCH_PROFILE[2]
    if requested is None:
        return tuple(min(b, limit) for b in DEFAULT_BATCH_PROFILE)  # type: ignore[return-value]
    low, opt, high = requested
    if not 1 <= low <= opt <= high:
        raise HRXError(f"--batch-profile {low},{opt},{high}: need 1 <= MIN <= OPT <= MAX")
    if high > limit:
        raise HRXError(f"--batch-profile {low},{opt},{high}: MAX is above the export's max_batch {limit}")
    return low, opt, high


def _model_info(model, source: Path) -> tuple[dict[str, str], list[str]]:
    from hrx.interface import ModelInfo

    try:
        return ModelInfo.from_props(metadata(model), str(source)).to_props(), []
    except HRXError:
        return {}, ["not an HRX export: the engine has no tiling metadata (hrx upscale cannot use it)"]


def _islands(model) -> dict[str, int]:
    try:
        return {k: len(v) for k, v in json.loads(metadata(model).get("fp32_islands", "{}")).items() if v}
    except (ValueError, AttributeError, TypeError):
        return {}


def _prepare(model, choice: BuildPrecision, src: Path):
    """The model to parse: converted to ``choice.convert_to`` if asked."""
    if choice.convert_to is None:
        return model
    if not parse_flag(metadata(model).get(choice.convert_to, "True")):
        raise HRXError(f"{src}: the model declares {choice.convert_to}=False (its architecture is known to misbehave "
                       f"in {choice.convert_to}); build it without --{choice.convert_to}")
    from hrx.export.precision import convert_precision

    converted, _ = convert_precision(model, choice.convert_to)
    return converted


def _plugin_model(model, hrx_nodes: dict[str, str], use_plugins: bool, src: Path, notes: list[str]):
    from hrx.runtime.trt.env import triton_problem
    from hrx.runtime.trt.plugins import register_plugins, strip_plugin_functions

    if use_plugins:
        reason = triton_problem()
        if reason is not None:
            from hrx.errors import MissingDependencyError

            raise MissingDependencyError(f"the hrx plugins need Triton and PyTorch CUDA: {reason}; or build the "
                                         "standard-op decomposition with --no-plugins")
        register_plugins()
        return strip_plugin_functions(model)
    if hrx_nodes:
        import onnx.inliner

        notes.append("hrx:: ops built from their standard-op decomposition (--no-plugins)")
        return onnx.inliner.inline_local_functions(model)
    return model


def load_engine(trt: ModuleType, serialized: Any, logger: Any, source: Path) -> dict[str, int]:
    """Deserialize a freshly built engine (it must load, or the build fails) and count its
    layers' output types from the inspector JSON."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        last = f": {logger.errors[-1]}" if logger.errors else ""
        raise HRXError(f"TensorRT built {source} but cannot load the engine it made{last}; nothing was written")
    inspector = engine.create_engine_inspector()
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    try:
        return precision_counts(json.loads(text))
    except ValueError:  # not JSON: the counts are informative only
        return {}


def build_engine(onnx_path: str | os.PathLike, output: str | os.PathLike | None = None,
                 options: BuildOptions | None = None, *, log: Log | None = None, **overrides: Any) -> BuildReport:
    """Build a TensorRT engine from ``onnx_path`` and write it (and its record) to ``output``.

    ``overrides`` are :class:`BuildOptions` fields, e.g. ``build_engine("m.onnx", fp16=True)``.
    Raises MissingDependencyError without TensorRT or a GPU, HRXError for bad input or a failed
    build; on any failure no engine, record or timing cache is written.
    """
    from hrx import __version__
    from hrx.interface import load_onnx
    from hrx.runtime.trt import ops as trt_ops
    from hrx.runtime.trt.env import require_gpu, require_tensorrt
    from hrx.runtime.trt.plugins import contract_problems, plugin_nodes

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
    choice = resolve_precision(opts, model)
    notes = list(choice.notes)
    hrx_nodes = {n.name: n.op_type for n in plugin_nodes(model)}
    use_plugins = bool(hrx_nodes) and opts.plugins is not False
    if use_plugins:
        problems = contract_problems(model)
        if problems:
            raise HRXError(f"{src}: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
    trt = require_tensorrt(what="hrx build")
    gpu = require_gpu(what="hrx build")
    typed = _prepare(model, choice, src)
    parsed = _plugin_model(typed, hrx_nodes, use_plugins, src, notes)
    unsupported = trt_ops.unsupported_ops(parsed, plugins=use_plugins)
    if unsupported:
        notes.append(f"ops missing from TensorRT {trt_ops.supported_ops().source['tensorrt_version']}'s ONNX "
                     f"operator list: {', '.join(unsupported)}")
    model_props, info_notes = _model_info(typed, src)
    notes += info_notes

    logger = _make_logger(trt, opts.verbose, log)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, use_plugins, opts.plugin_impl))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(parsed.SerializeToString(), str(src)):
        raise _parser_error(parser, str(src))
    in_name, in_shape, out_name, out_shape = _io(network)

    config = builder.create_builder_config()
    if in_shape[0] < 0:  # `hrx export --batch dynamic`: one optimisation profile over the batch, static tile
        low, opt, high = batch_profile(opts.batch_profile, model_props)
        profile = builder.create_optimization_profile()
        profile.set_shape(in_name, [low, *in_shape[1:]], [opt, *in_shape[1:]], [high, *in_shape[1:]])
        config.add_optimization_profile(profile)
        model_props = {**model_props, "max_batch": str(high), "batch_profile": f"{low},{opt},{high}"}
        notes.append(f"dynamic batch: optimisation profile min/opt/max {low}/{opt}/{high} tiles")
    elif opts.batch_profile is not None:
        raise HRXError(f"{src}: --batch-profile needs a dynamic batch axis; export with `hrx export --batch dynamic`")
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if opts.workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gb * (1 << 30)))
    cache = None
    if opts.timing_cache is not None:
        data = Path(opts.timing_cache).read_bytes() if Path(opts.timing_cache).is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)

    log(f"building {src.name} ({choice.precision}, strongly typed) on {gpu.name} with TensorRT {trt.__version__} ...")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if serialized is None:
        last = f": {logger.errors[-1]}" if logger.errors else " (run with --verbose for TensorRT's log)"
        raise HRXError(f"TensorRT failed to build {src}{last}")
    counts = load_engine(trt, serialized, logger, src)

    record = EngineRecord(
        onnx_sha256=file_sha256(src), onnx_path=str(src.resolve()), precision=choice.precision,
        tensorrt_version=str(trt.__version__), gpu_name=gpu.name, compute_capability=gpu.compute_capability,
        input_name=in_name, input_shape=in_shape, output_name=out_name, output_shape=out_shape,
        model_info=model_props, plugins=sorted({f"{PLUGIN_DOMAIN}::{op}" for op in hrx_nodes.values()})
        if use_plugins else [], plugin_impl=opts.plugin_impl if use_plugins else "",
        fp32_islands=_islands(typed), hrx_version=__version__, built_at=now_iso())
    if cache is not None:  # before the pair: a cache that cannot be written leaves the old engine as it was
        atomic_write_bytes(opts.timing_cache, bytes(config.get_timing_cache().serialize()))
    record = write_engine(out, bytes(serialized), record)
    return BuildReport(out, record, seconds, counts, notes)


def engine_for(onnx_path: str | os.PathLike, precision: str = "auto", *, plugin_impl: str = "jit",
               root: str | os.PathLike | None = None, log: Log | None = None) -> Path:
    """The cached engine for ``onnx_path`` on this machine, built on first use (``--backend trt``), in
    ``precision`` (``auto``: the file's own, :func:`precision_for`)."""
    from hrx.interface import load_onnx
    from hrx.runtime.trt.cache import cached_engine_for, check_engine, current_env

    log = log or (lambda _msg: None)
    if not Path(onnx_path).is_file():
        raise HRXError(f"{onnx_path}: no such file")
    precision = precision_for(load_onnx(onnx_path, load_external_data=False), precision)
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
