"""Checkpoint -> fused, frozen, static-shape ONNX.

Pipeline: load -> ``hrx.fuse`` -> trace at ``[batch, C, tile, tile]`` -> ``torch.onnx.export``
(the current ``dynamo=True`` exporter; the legacy TorchScript exporter is deprecated) ->
hrx local functions attached (plugin mode) -> ``onnx.checker`` (full) + shape inference ->
onnxsim (onnxslim when onnxsim cannot take the graph) -> each node's module scope as its ``hrx_scope``
metadata -> graph passes for the CPU engine the file is for (:mod:`hrx.export.passes`, ``target``) ->
metadata -> atomic save.

``ops="native"`` lowers the selective scan (chunked SSD, channels first: MatMul / CumSum / Exp) and the
top-1 MoE (dense masked: ArgMax / Equal / Mul / ReduceSum) to standard ONNX ops.
``ops="plugin"`` keeps them as ``hrx::SelectiveScan`` / ``hrx::MoETop1`` nodes (see
:mod:`hrx.export.functions`).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from hrx.errors import HRXError, check_choice
from hrx.paths import atomic_write
from hrx.interface import ModelInfo

DEFAULT_OPSET = 18
OPS_MODES = ("native", "plugin")
DYNAMIC = "dynamic"  # ``batch="dynamic"``: a symbolic batch axis (Triton's dynamic batcher), static tile
MAX_DYNAMIC_BATCH = 64  # the largest batch a dynamic export promises (metadata ``max_batch``)


@dataclass
class ExportResult:
    path: Path
    info: ModelInfo
    simplifier: str  # "onnxsim", "onnxslim" or "none", with the reasons of any that failed
    passes: str = "none"  # what hrx.export.passes rewrote
    node_counts: Counter = field(default_factory=Counter)
    parameters: int = 0
    macs_per_tile: int = 0
    file_size: int = 0
    seconds: float = 0.0
    precision_line: str = "precision: fp32"

    def summary(self) -> str:
        """The lines ``hrx export`` prints: file, model, input and output, node counts, MACs, precision."""
        top = ", ".join(f"{op} {n}" for op, n in self.node_counts.most_common(12))
        i = self.info
        return (f"wrote {self.path} ({self.file_size / 1e6:.2f} MB) in {self.seconds:.1f}s\n"
                f"  model: {i.arch} x{i.scale}, {i.in_channels}->{i.out_channels} channels, ops={i.ops}, opset {i.opset}\n"
                f"  input: [{batch_dim(i)}, {i.in_channels}, {i.tile}, {i.tile}] -> output "
                f"[{batch_dim(i)}, {i.out_channels}, {i.tile * i.scale}, {i.tile * i.scale}], tile overlap {i.tile_overlap}\n"
                f"  parameters (fused): {self.parameters:,}; MACs per tile: {self.macs_per_tile / 1e9:.2f} G\n"
                f"  simplified with: {self.simplifier}; graph passes: {self.passes}\n"
                f"  {self.precision_line}\n"
                f"  nodes ({sum(self.node_counts.values())}): {top}")


def batch_dim(info: ModelInfo) -> str:
    """``"batch"`` (1..max_batch) for a dynamic-batch export, else the static batch."""
    if is_dynamic_batch(info):
        return f"batch (1..{info.extra.get('max_batch', '?')})"
    return str(info.batch)


def is_dynamic_batch(info: ModelInfo) -> bool:
    """Whether the model was exported with ``--batch dynamic`` (its ``batch`` is then the tiles per call
    that a local run sends; the graph takes any batch up to the metadata's ``max_batch``)."""
    return info.extra.get("batch_axis") == DYNAMIC


def parse_batch(batch: int | str) -> int | str:
    """``--batch``: a positive integer (static) or ``dynamic``."""
    if isinstance(batch, str) and batch.strip().lower() == DYNAMIC:
        return DYNAMIC
    try:
        value = int(batch)
    except (TypeError, ValueError):
        raise HRXError(f"batch must be a positive integer or 'dynamic', not {batch!r}") from None
    if value < 1:
        raise HRXError(f"batch must be at least 1, not {value}")
    return value


def check_tile(tile: int, size_multiple: int, min_size: int = 0) -> None:
    """Raise :class:`HRXError` when ``tile`` is not a positive multiple of ``size_multiple`` or below ``min_size``."""
    if min_size and tile < min_size:
        raise HRXError(f"tile {tile} is smaller than the model's minimum input side {min_size}")
    if tile <= 0 or tile % size_multiple:
        lo = tile // size_multiple * size_multiple
        near = [v for v in (lo, lo + size_multiple) if v > 0]
        raise HRXError(f"tile {tile} is not a multiple of the model's size_multiple {size_multiple}; "
                       f"nearest valid tiles: {' or '.join(map(str, near))}")


def _load(checkpoint: str | os.PathLike | nn.Module) -> tuple[nn.Module, str]:
    import hrx
    from hrx.checkpoint import resolve_checkpoint
    from hrx.paths import file_sha256

    if isinstance(checkpoint, nn.Module):
        return checkpoint, ""
    path = resolve_checkpoint(checkpoint)
    return hrx.load_model(path), file_sha256(path)


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter prints progress and warns about torchvision; keep the CLI output ours."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.onnx._internal.exporter._registration",
                                              "torch._export", "torch.export")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def fit_overlap(overlap: int, tile: int, size_multiple: int) -> int:
    """The model's overlap, at most half the tile (rounded down to the size multiple): more would spend
    over 75% of every tile on context."""
    half = tile // 2 // max(1, size_multiple) * max(1, size_multiple)
    return int(min(overlap, half))


def _requirements(model: nn.Module) -> dict:
    """Size / dtype requirements a model declares (third-party models do; HRX models use the defaults),
    and the extra metadata it wants in the file."""
    keys = {"min_size": int, "square": bool, "fp16": bool, "bf16": bool}
    out: dict = {k: t(getattr(model, k)) for k, t in keys.items() if hasattr(model, k)}
    if callable(getattr(model, "info_extra", None)):
        out["extra"] = dict(model.info_extra())
    return out


def trace_to_onnx(deploy: nn.Module, example: torch.Tensor, ops: str, opset: int,
                  dynamic_batch: bool = False, arch: str = "") -> onnx.ModelProto:
    """Export a fused eval model to an (unsimplified) ONNX ModelProto; ``dynamic_batch``: the first axis
    of the input and output is symbolic (``batch``), every other dimension stays static."""
    table = None
    if ops == "plugin":
        import onnxscript

        from hrx.export import custom_ops
        from hrx.export.functions import DOMAIN_VERSION, register_schemas
        from hrx.export.onnx_tools import PLUGIN_DOMAIN, PLUGIN_VERSION

        register_schemas()
        custom_ops._register()
        hrx_ops = onnxscript.values.Opset(PLUGIN_DOMAIN, DOMAIN_VERSION)
        attrs = dict(plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_DOMAIN)

        def scan_to_onnx(x, dt, A, B, C, D, chunk: int):
            return hrx_ops.SelectiveScan(x, dt, A, B, C, D, chunk=chunk, **attrs)

        def moe_to_onnx(logits, experts):
            return hrx_ops.MoETop1(logits, experts, **attrs)

        table = {torch.ops.hrx.selective_scan.default: scan_to_onnx, torch.ops.hrx.moe_top1.default: moe_to_onnx}
        deploy = custom_ops.use_plugin_ops(copy.deepcopy(deploy))  # the caller's model keeps its routing
    dynamic = ({0: torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)},) if dynamic_batch else None
    with _quiet_exporter(), torch.no_grad():
        try:
            program = torch.onnx.export(deploy, (example,), dynamo=True, opset_version=opset, input_names=["input"],
                                        output_names=["output"], custom_translation_table=table, optimize=True,
                                        verbose=False, dynamic_shapes=dynamic)
        except Exception as e:  # noqa: BLE001 - the exporter raises many kinds
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            where = f" for architecture {arch}" if arch else ""
            raise HRXError(f"ONNX export failed{where}: {_failing_op(e) or first}") from e
    model = program.model_proto
    if dynamic_batch:  # the exporter names the symbol after the Dim, or s0; make it "batch" on both ends
        for value in (model.graph.input[0], model.graph.output[0]):
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
    if ops == "plugin":
        from hrx.export.functions import attach_functions

        attach_functions(model)
    return model


def _failing_op(e: BaseException) -> str:
    """``op <name> failed to convert`` when the exporter's error names the operator it could not convert."""
    import re

    text = "\n".join(str(x) for x in (e, e.__cause__, e.__context__) if x)
    m = re.search(r"(aten::[\w.]+|torch\.ops\.[\w.]+|<OpOverload\(op='([\w.:]+)'[^>]*>)", text)
    if not m:
        return ""
    op = m.group(2) or m.group(1)
    return f"op {op} failed to convert"


def module_output_map(model: onnx.ModelProto) -> dict[str, str]:
    """``{module path: tensor name}``: for every PyTorch module scope the exporter recorded on the
    nodes, the first output of the scope's last node (its return value). Used by ``--bisect``."""
    import ast

    last: dict[str, str] = {}
    for node in model.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        scopes = props.get("pkg.torch.onnx.name_scopes")
        if not scopes or not node.output:
            continue
        try:
            names = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            continue
        for scope in names[1:-1]:  # '' is the root; the last entry is the fx node itself
            last[scope] = node.output[0]
    return last


SCOPE_KEY = "hrx_scope"  # node metadata: the PyTorch module the node came from (benchmarks/profile_graph.py)


def node_scopes(model: onnx.ModelProto) -> dict[str, str]:
    """``{node name: module path}`` (the innermost module scope the exporter recorded on each node)."""
    import ast

    out: dict[str, str] = {}
    for node in model.graph.node:
        scopes = {p.key: p.value for p in node.metadata_props}.get("pkg.torch.onnx.name_scopes")
        try:
            names = ast.literal_eval(scopes) if scopes else []
        except (ValueError, SyntaxError):
            continue
        if node.name and len(names) > 2:
            out[node.name] = names[-2]
    return out


def mark_scopes(model: onnx.ModelProto, scopes: dict[str, str]) -> None:
    """Write each node's module path (``scopes``, by node name) as its ``hrx_scope`` metadata: the
    simplifier drops the exporter's own node metadata but keeps the names."""
    for node in model.graph.node:
        if node.name in scopes and not any(p.key == SCOPE_KEY for p in node.metadata_props):
            node.metadata_props.add(key=SCOPE_KEY, value=scopes[node.name])


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """onnxsim first; onnxslim where onnxsim fails or is missing. Returns (model, which ran); a
    simplifier that fails is reported in that string and logged on one line with its reason, e.g.
    ``onnxslim (onnxsim failed: ...)``."""
    failures = []
    for name, run in (("onnxsim", _onnxsim), ("onnxslim", _onnxslim)):
        try:
            with _quiet_exporter():
                simplified = run(model)
            return simplified, name + (f" ({'; '.join(failures)})" if failures else "")
        except Exception as e:  # noqa: BLE001 - simplifiers raise anything; the next one (or none) takes over
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            failures.append(f"{name} failed: {reason}")
            logging.getLogger("hrx.export").warning("%s failed, graph %s: %s", name,
                                                    "tried with onnxslim" if name == "onnxsim" else "left unsimplified",
                                                    reason)
    return model, f"none ({'; '.join(failures)})"


def _onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise HRXError("its check of the simplified graph against the original failed")
    return simplified


def _onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


def count_macs(model: onnx.ModelProto) -> int:
    """Multiply-accumulates of Conv and MatMul nodes, from inferred static shapes."""
    from hrx.export.onnx_tools import Graph

    # a symbolic batch counts one tile
    shapes = {name: [d or 1 for d in dims] for name, dims in Graph(model).shapes.items()}
    macs = 0
    for n in model.graph.node:
        if n.op_type == "Conv" and n.output[0] in shapes and n.input[1] in shapes:
            w = shapes[n.input[1]]
            macs += int(np.prod(shapes[n.output[0]])) * int(np.prod(w[1:]))
        elif n.op_type == "MatMul" and n.input[0] in shapes and n.output[0] in shapes:
            a = shapes[n.input[0]]
            if a:
                macs += int(np.prod(shapes[n.output[0]])) * a[-1]
    return macs


def save_onnx(model: onnx.ModelProto, output: Path) -> None:
    """Write ``model`` to ``output`` atomically (:func:`hrx.paths.atomic_write`); a missing or
    read-only folder is a one-line error."""
    check_output_folder(output)
    atomic_write(output, lambda tmp: onnx.save(model, tmp))


def check_output_folder(output: Path) -> None:
    """One-line error when ``output``'s folder is missing or read-only (checked before an export's
    minutes of tracing, and again when writing)."""
    out_dir = output.parent if str(output.parent) else Path(".")
    if not out_dir.is_dir():
        raise HRXError(f"{output}: output folder {out_dir} does not exist")
    if not os.access(out_dir, os.W_OK):
        raise HRXError(f"{output}: output folder {out_dir} is not writable")


def export_onnx(checkpoint: str | os.PathLike | nn.Module, output: str | os.PathLike, tile: int = 256,
                batch: int | str = 1, ops: str = "native", opset: int = DEFAULT_OPSET,
                simplify_graph: bool = True, precision: str = "fp32", io: str = "fp32",
                graph_passes: bool = True, target: str | None = None) -> ExportResult:
    """Export a checkpoint (path, bundled name or model) to a static-shape ONNX file; ``batch="dynamic"``
    leaves the batch axis symbolic (1..``MAX_DYNAMIC_BATCH``) for servers that batch requests.

    ``precision`` fp16/bf16 converts the graph with FP32 islands (:mod:`hrx.export.precision`);
    ``io`` fp16 makes the graph's input and output half precision too. ``target`` (``openvino`` or
    ``onnxruntime``; default: :func:`hrx.export.onnx_tools.default_target`) picks the graph passes
    (:data:`hrx.export.passes.TARGET_PASSES`) and is recorded in the metadata as ``graph_target``."""
    import hrx
    from hrx.export.onnx_tools import FLOAT_PRECISIONS, IO_PRECISIONS, metadata, set_metadata
    from hrx.export.precision import convert_precision

    start = time.perf_counter()
    check_choice("--ops", ops, OPS_MODES)
    from hrx.export.onnx_tools import GRAPH_TARGETS, default_target
    from hrx.export.passes import TARGET_PASSES

    batch = parse_batch(batch)
    dynamic_batch = batch == DYNAMIC
    target = target or default_target(ops, precision, dynamic_batch)
    check_choice("--target", target, GRAPH_TARGETS)
    if ops == "plugin" and target == "openvino":
        raise HRXError("--ops plugin files do not run on OpenVINO: export them with --target onnxruntime")
    if opset < 18:
        raise HRXError(f"opset {opset} is too old: the exporter needs opset 18 or newer")
    check_choice("--precision", precision, FLOAT_PRECISIONS)
    check_choice("--io", io, IO_PRECISIONS)
    if io != "fp32" and precision == "fp32":
        raise HRXError("--io fp16 needs --precision fp16 or bf16")
    output = Path(output)
    check_output_folder(output)
    model, sha = _load(checkpoint)
    if precision != "fp32" and _requirements(model).get(precision) is False:
        raise HRXError(f"{getattr(model, 'arch', type(model).__name__)} is known to misbehave in {precision} "
                       f"(its model declares {precision}=False); export it with --precision fp32"
                       + (" or bf16" if precision == "fp16" and _requirements(model).get("bf16", True) else ""))
    check_tile(tile, model.size_multiple, int(getattr(model, "min_size", 0)))
    deploy = hrx.fuse(model)
    example = torch.rand(2 if dynamic_batch else batch, model.in_channels, tile, tile, generator=torch.Generator().manual_seed(0))
    proto = trace_to_onnx(deploy, example, ops, opset, dynamic_batch, arch=getattr(model, "arch", ""))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise HRXError(f"exported graph failed onnx.checker: {str(e).splitlines()[0]}") from e
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    scopes, node_scope = module_output_map(proto), node_scopes(proto)
    simplifier = "none"
    if simplify_graph:
        proto, simplifier = simplify(proto)
        onnx.checker.check_model(proto, full_check=True)
    mark_scopes(proto, node_scope)
    passes = "none"
    if graph_passes and precision == "fp32":  # the CPU path; fp16/bf16 keep the islands' patterns as exported
        from hrx.export.passes import optimize

        passes = str(optimize(proto, TARGET_PASSES[target]))
    produced = {o for n in proto.graph.node for o in n.output}
    scopes = {k: v for k, v in scopes.items() if v in produced}
    requirements = _requirements(model)
    extra = requirements.pop("extra", {})
    if dynamic_batch:
        extra.update(batch_axis=DYNAMIC, max_batch=str(MAX_DYNAMIC_BATCH))
    # what `hrx verify --bisect` re-exports with to get the same graph (precision and io_precision: below);
    # recorded only when off, so a default export's metadata is what it always was
    extra.update({k: "false" for k, on in (("simplify", simplify_graph), ("graph_passes", graph_passes)) if not on})
    if passes != "none":
        extra["graph_target"] = target
    info = ModelInfo(arch=getattr(model, "arch", type(model).__name__), scale=model.scale, in_channels=model.in_channels,
                     out_channels=model.out_channels, tile=tile, batch=1 if dynamic_batch else batch,
                     size_multiple=model.size_multiple,
                     tile_overlap=fit_overlap(model.tile_overlap, tile, model.size_multiple), ops=ops, opset=opset,
                     hrx_version=hrx.__version__, checkpoint_sha256=sha, precision=precision, extra=extra,
                     **requirements)
    set_metadata(proto, {**info.to_props(), "hrx_bisect_map": json.dumps(scopes, sort_keys=True)})
    proto, plan = convert_precision(proto, precision, io)
    if precision != "fp32":
        onnx.checker.check_model(proto, full_check=True)
        info = ModelInfo.from_props(metadata(proto), str(output))
    proto.producer_name, proto.producer_version = "hrx", hrx.__version__
    save_onnx(proto, output)
    params = sum(p.numel() for p in deploy.parameters())
    return ExportResult(path=output, info=info, simplifier=simplifier, passes=passes,
                        node_counts=Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in proto.graph.node),
                        parameters=params, macs_per_tile=count_macs(proto), file_size=output.stat().st_size,
                        seconds=time.perf_counter() - start, precision_line=plan.summary())
