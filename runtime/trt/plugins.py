"""TensorRT plugins for the two ``hrx::`` custom ops of ``hrx export --ops plugin``.

How TensorRT's ONNX parser reaches these plugins (onnx-tensorrt, TensorRT 10.x):

* A node whose ``op_type`` has no built-in importer goes to the *fallback plugin importer*
  (``ModelImporter.cpp``/``onnxOpImporters.cpp``). It asks the plugin registry for the creator
  named ``op_type``, version = the node's string attribute ``plugin_version`` (default ``"1"``),
  namespace = its string attribute ``plugin_namespace`` (default ``""``); since TensorRT 10.10 it
  retries with the node's ``domain`` as namespace. So ``hrx::SelectiveScan`` nodes (domain
  ``hrx``, ``plugin_version="1"``, ``plugin_namespace="hrx"``) resolve to the plugin registered
  here as ``@trtp.register("hrx::SelectiveScan")`` (name ``SelectiveScan``, namespace ``hrx``;
  ``tensorrt.plugin`` always registers version ``"1"``).
* The node's attributes become plugin fields only for the field names the creator declares (the
  ``register`` function's attribute parameters): an ONNX INT attribute arrives as one INT32, a
  STRING as CHAR. ``plugin_version``/``plugin_namespace`` are only used for the lookup.
* ONNX local functions: TensorRT 9.0-10.6 import a node that names a local function by
  inlining the function, even when a plugin is registered; 10.7-10.14 prefer a registered plugin
  over the local function ("Now prioritizes using plugins over local functions", 10.7
  changelog); 10.15 prefers the plugin when the node carries a ``plugin_namespace`` attribute
  (or the parser flag ``ENABLE_PLUGIN_OVERRIDE`` is set) and otherwise inlines the function.
  ``hrx build`` therefore does not rely on the version: it registers these plugins and parses a
  copy of the model *without* the ``hrx`` FunctionProtos (:func:`strip_plugin_functions`), so
  every 10.x parser takes the plugin path; ``--no-plugins`` keeps the functions and builds the
  standard-op decomposition instead.
* A Python plugin may carry a JIT implementation (``@trtp.impl``: Python + Triton at run time)
  and an AOT one (``@trtp.aot_impl``, TensorRT >= 10.9: Triton compiled to PTX and stored in the
  engine). The parser picks one from the node attribute ``aot`` if present, else from the
  network flags ``PREFER_AOT_PYTHON_PLUGINS``/``PREFER_JIT_PYTHON_PLUGINS`` (``hrx build`` sets one
  of them from ``--plugin-impl``); the exporter must not write ``aot``.

Importing this module imports neither tensorrt nor triton; :func:`register_plugins` does.
This module deliberately has no ``from __future__ import annotations``: ``tensorrt.plugin``
reads the decorated functions' annotations as objects.
"""
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Tuple, Union

import numpy as np
import numpy.typing as npt

from hrx.errors import HRXError, MissingDependencyError
from hrx.export.onnx_tools import PLUGIN_DOMAIN, PLUGIN_VERSION

if TYPE_CHECKING:
    import onnx

PLUGIN_IMPLS = ("jit", "aot")


@dataclass(frozen=True)
class PluginSpec:
    """What an exported ``hrx::`` node must look like for TensorRT to find its plugin."""

    name: str  # ONNX op_type == TensorRT plugin name
    inputs: Tuple[str, ...]
    int_attrs: Tuple[str, ...] = ()  # attributes passed to the plugin (ONNX INT)
    namespace: str = PLUGIN_DOMAIN  # ONNX domain == attribute plugin_namespace == plugin namespace
    version: str = PLUGIN_VERSION  # attribute plugin_version (a STRING)

    @property
    def plugin_id(self) -> str:
        """``namespace::name``, as TensorRT registers it."""
        return f"{self.namespace}::{self.name}"


SELECTIVE_SCAN = PluginSpec("SelectiveScan", inputs=("x", "dt", "A", "B", "C", "D"), int_attrs=("chunk",))
MOE_TOP1 = PluginSpec("MoETop1", inputs=("logits", "experts"))
PLUGINS = {s.name: s for s in (SELECTIVE_SCAN, MOE_TOP1)}


# ``chunk`` is declared as an int32 array, not ``int``: for an ``int`` attribute TensorRT 10.x's
# tensorrt.plugin calls ``int()`` on the one-element field array, which NumPy >= 2.4 refuses
# ("only 0-dimensional arrays can be converted to Python scalars"); for an array annotation it
# passes the array through, and :func:`attr_int` reads it on any NumPy (and on TensorRT 11).
IntAttr = npt.NDArray[np.int32]


def attr_int(value: "int | npt.ArrayLike") -> int:
    """An INT plugin attribute as a Python int, whether it arrives as an int or a (1,) array."""
    return int(np.asarray(value).reshape(-1)[0])


def plugin_nodes(model: "onnx.ModelProto") -> "list[onnx.NodeProto]":
    """The ``hrx``-domain nodes of the main graph (``onnx.NodeProto``)."""
    return [n for n in model.graph.node if n.domain == PLUGIN_DOMAIN]


def _attribute_type(where: str, key: str, a, kind: int, missing: str, want: str) -> Optional[str]:
    """Why attribute ``a`` (``None`` when absent) is not of type ``kind`` (None when it is)."""
    import onnx

    if a is None:
        return f"{where}: attribute {key} is missing ({missing})"
    if a.type != kind:
        return f"{where}: attribute {key} must be {want}, not {onnx.AttributeProto.AttributeType.Name(a.type)}"
    return None


def node_problems(node: "onnx.NodeProto") -> List[str]:
    """Why an ``hrx::`` node would not resolve to its TensorRT plugin ([] when it will)."""
    import onnx

    where = f"node {node.name or node.op_type!r} ({node.domain}::{node.op_type})"
    spec = PLUGINS.get(node.op_type)
    if node.domain != PLUGIN_DOMAIN or spec is None:
        return [f"{where}: no hrx plugin has this name (known: {', '.join(sorted(PLUGINS))})"]
    problems = []
    attrs = {a.name: a for a in node.attribute}
    string, integer = onnx.AttributeProto.STRING, onnx.AttributeProto.INT
    for key, want in (("plugin_version", spec.version), ("plugin_namespace", spec.namespace)):
        a = attrs.get(key)
        problem = _attribute_type(where, key, a, string, f"want the string {want!r}",
                                  "a STRING (the parser reads it as one)")
        if problem is None and a.s.decode() != want:
            problem = f"{where}: attribute {key} is {a.s.decode()!r}, want {want!r}"
        problems += [problem] if problem else []
    for key in spec.int_attrs:
        problem = _attribute_type(where, key, attrs.get(key), integer, "an INT the plugin needs", "an INT")
        problems += [problem] if problem else []
    if "aot" in attrs:
        problems.append(f"{where}: attribute aot overrides hrx build's --plugin-impl; do not export it")
    if len(node.input) != len(spec.inputs):
        problems.append(f"{where}: {len(node.input)} inputs, want {len(spec.inputs)} ({', '.join(spec.inputs)})")
    if len(node.output) != 1:
        problems.append(f"{where}: {len(node.output)} outputs, want 1")
    return problems


def contract_problems(model: "onnx.ModelProto") -> List[str]:
    """Every way the plugin export breaks the parser contract (empty list: TensorRT will map it)."""
    problems = [p for n in plugin_nodes(model) for p in node_problems(n)]
    functions = {(f.domain, f.name) for f in model.functions}
    for name in sorted({n.op_type for n in plugin_nodes(model)} & set(PLUGINS)):
        if (PLUGIN_DOMAIN, name) not in functions:
            problems.append(f"{PLUGIN_DOMAIN}::{name}: no ONNX local function (FunctionProto domain "
                            f"{PLUGIN_DOMAIN!r}, name {name!r}) with its standard-op decomposition")
    if plugin_nodes(model) and PLUGIN_DOMAIN not in {o.domain for o in model.opset_import}:
        problems.append(f"opset_import lacks the {PLUGIN_DOMAIN!r} domain")
    return problems


def strip_plugin_functions(model: "onnx.ModelProto") -> "onnx.ModelProto":
    """A copy of ``model`` without the FunctionProtos of ops that are built as plugins."""
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [f for f in out.functions if not (f.domain == PLUGIN_DOMAIN and f.name in PLUGINS)]
    del out.functions[:]
    out.functions.extend(keep)
    return out


# --- registration with TensorRT (lazy) ------------------------------------------------------------

_registered: dict = {}


def _import_trt_plugin():
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as e:
        raise MissingDependencyError(f"the hrx TensorRT plugins need tensorrt>=10.6 with tensorrt.plugin ({e}); "
                                     "install it with pip install 'hrx[tensorrt]'") from None
    return trt, trtp


def register_plugins() -> Tuple[str, ...]:
    """Register ``hrx::SelectiveScan`` and ``hrx::MoETop1`` with TensorRT (once per process).

    Must run before parsing a plugin export and before deserializing an engine whose plugins use
    the JIT implementation. Returns the registered plugin ids.
    """
    if not _registered:
        trt, trtp = _import_trt_plugin()
        _define_selective_scan(trt, trtp)
        _define_moe_top1(trt, trtp)
        _registered.update({s.plugin_id: True for s in PLUGINS.values()})
        _registered["aot"] = hasattr(trtp, "aot_impl")
    return tuple(s.plugin_id for s in PLUGINS.values())


def aot_available() -> bool:
    """Whether the AOT implementations are registered (TensorRT >= 10.9)."""
    return bool(_registered.get("aot"))


def _static_shape(desc) -> Tuple[int, ...]:
    dims = []
    for i in range(desc.ndim):
        e = desc.shape_expr[i]
        if not e.is_constant:
            raise ValueError("the hrx plugins need static shapes (export with a fixed tile and batch)")
        dims.append(int(e.constant_value()))
    return tuple(dims)


def _dtype_name(trt, desc) -> str:
    return "fp16" if desc.dtype == trt.float16 else "fp32"


def _launch_params(trtp, kernel) -> object:
    params = trtp.KernelLaunchParams()
    params.grid_x, params.grid_y, params.grid_z = kernel.grid
    params.block_x = kernel.num_warps * 32
    params.shared_mem = kernel.shared
    return params


def _define_selective_scan(trt, trtp) -> None:
    pid = SELECTIVE_SCAN.plugin_id

    @trtp.register(pid)
    def selective_scan_desc(x: trtp.TensorDesc, dt: trtp.TensorDesc, A: trtp.TensorDesc, B: trtp.TensorDesc,
                            C: trtp.TensorDesc, D: trtp.TensorDesc, chunk: IntAttr) -> trtp.TensorDesc:
        return x.like()  # y [b, H, P, L], x's type

    @trtp.autotune(pid)
    def selective_scan_autotune(x: trtp.TensorDesc, dt: trtp.TensorDesc, A: trtp.TensorDesc,
                                B: trtp.TensorDesc, C: trtp.TensorDesc, D: trtp.TensorDesc,
                                outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        # I/O order: x, dt, A, B, C, D, y. dt, A, D stay FP32 (exp(dt * A) is the FP16 hazard);
        # x, B, C, y may be FP16. The kernel computes in FP32 either way.
        return [trtp.AutoTuneCombination("FP32, FP32, FP32, FP32, FP32, FP32, FP32"),
                trtp.AutoTuneCombination("FP16, FP32, FP32, FP16, FP16, FP32, FP16")]

    @trtp.impl(pid)
    def selective_scan_impl(x: trtp.Tensor, dt: trtp.Tensor, A: trtp.Tensor, B: trtp.Tensor, C: trtp.Tensor,
                            D: trtp.Tensor, chunk: IntAttr, outputs: Tuple[trtp.Tensor], stream: int) -> None:
        import torch

        from hrx.runtime.trt import kernels

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            args = [torch.as_tensor(t, device="cuda") for t in (x, dt, A, B, C, D)]
            kernels.selective_scan_into(*args, out=torch.as_tensor(outputs[0], device="cuda"), chunk=attr_int(chunk))

    if hasattr(trtp, "aot_impl"):
        @trtp.aot_impl(pid)
        def selective_scan_aot(x: trtp.TensorDesc, dt: trtp.TensorDesc, A: trtp.TensorDesc, B: trtp.TensorDesc,
                               C: trtp.TensorDesc, D: trtp.TensorDesc, chunk: IntAttr,
                               outputs: Tuple[trtp.TensorDesc], tactic: int
                               ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams,
                                          trtp.SymIntExprs]:
            from hrx.runtime.trt import kernels

            k = kernels.compile_selective_scan(_static_shape(x), _static_shape(B)[1], attr_int(chunk),
                                               io_dtype=_dtype_name(trt, x))
            return k.name, k.ptx, _launch_params(trtp, k), trtp.SymIntExprs(0)


def _define_moe_top1(trt, trtp) -> None:
    pid = MOE_TOP1.plugin_id

    @trtp.register(pid)
    def moe_top1_desc(logits: trtp.TensorDesc, experts: trtp.TensorDesc) -> trtp.TensorDesc:
        s = experts.shape_expr  # [B, E, C, H, W] -> [B, C, H, W]
        return trtp.from_shape_expr((s[0], s[2], s[3], s[4]), dtype=experts.dtype)

    @trtp.autotune(pid)
    def moe_top1_autotune(logits: trtp.TensorDesc, experts: trtp.TensorDesc,
                          outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        # I/O order: logits, experts, out. The logits (softmax input) stay FP32.
        return [trtp.AutoTuneCombination("FP32, FP32, FP32"), trtp.AutoTuneCombination("FP32, FP16, FP16")]

    @trtp.impl(pid)
    def moe_top1_impl(logits: trtp.Tensor, experts: trtp.Tensor, outputs: Tuple[trtp.Tensor], stream: int) -> None:
        import torch

        from hrx.runtime.trt import kernels

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            kernels.moe_top1_into(torch.as_tensor(logits, device="cuda"), torch.as_tensor(experts, device="cuda"),
                                  out=torch.as_tensor(outputs[0], device="cuda"))

    if hasattr(trtp, "aot_impl"):
        @trtp.aot_impl(pid)
        def moe_top1_aot(logits: trtp.TensorDesc, experts: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc],
                         tactic: int
                         ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams,
                                    trtp.SymIntExprs]:
            from hrx.runtime.trt import kernels

            k = kernels.compile_moe_top1(_static_shape(experts), logits_dtype=_dtype_name(trt, logits),
                                         io_dtype=_dtype_name(trt, experts))
            return k.name, k.ptx, _launch_params(trtp, k), trtp.SymIntExprs(0)


def check_plugin_impl(impl: str) -> str:
    """``impl`` when it is one of :data:`PLUGIN_IMPLS`; one-line :class:`HRXError` otherwise."""
    if impl not in PLUGIN_IMPLS:
        raise HRXError(f"unknown plugin implementation {impl!r}; choose one of {', '.join(PLUGIN_IMPLS)}")
    return impl

