"""The ONNX toolkit that export passes, precision conversion, calibration and the TensorRT builder share:
one graph helper, one op taxonomy, one precision vocabulary with its spellings, one is-quantized check.

* :class:`Graph`: producers, consumers, initializers, constants, shapes and types of a graph by tensor
  name, with the small edits the passes make (fresh names, new initializers, rewiring, dropping dead
  nodes and unused initializers);
* op sets: :data:`COMPUTE_OPS` (ops with a weight), :data:`MOVE_OPS` (data movement),
  :data:`CHEAP_OPS` (element-wise and shape ops an FP32 island extends through), :data:`SOFTMAX_OPS`,
  :data:`ROUTER_OPS`, :data:`NORM_OPS`, :data:`RESIZE_OPS`, :data:`SCAN_OPS` (the selective scan's decays
  and step sizes), :data:`QDQ_OPS` and :data:`QUANT_OPS` (every quantized op ONNX Runtime or a quantizer
  may write); :data:`PLUGIN_DOMAIN` and :data:`PLUGIN_VERSION` of the ``hrx::`` plugin ops;
* precisions: :data:`PRECISIONS` (what a graph computes in: ``int8`` is a Q/DQ graph),
  :data:`FLOAT_PRECISIONS` (what ``hrx export --precision`` writes), :data:`IO_PRECISIONS`, the other
  spellings callers pass (``int8-qdq`` from ModelInfo, ``float16``, ``half`` ...) and
  :func:`normalize_precision`;
* :func:`quantized_ops` / :func:`is_qdq`: the quantized ops a model holds, in its graph and its local
  functions; :func:`graph_precision` / :func:`float_precision`: what a graph computes in, read from its
  ops and weights; :func:`declared_precision`: what its metadata says;
* :func:`opset`: the default-domain opset; :func:`metadata` / :func:`set_metadata` /
  :func:`update_metadata`: the model's ``metadata_props`` as a dict.

``onnx`` is imported inside the functions that need it: the base install (no ``onnx`` package) reads
the vocabulary from here.
"""
from __future__ import annotations

from collections import defaultdict
from functools import cached_property
from typing import TYPE_CHECKING, Any, Collection, Iterable, Literal

import numpy as np

from hrx.errors import HRXError

if TYPE_CHECKING:
    import onnx

# --- op taxonomy ---------------------------------------------------------------------------------

PLUGIN_DOMAIN = "hrx"  # ONNX domain of the plugin ops == TensorRT plugin namespace
PLUGIN_VERSION = "1"  # their plugin_version attribute

COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
MOVE_OPS = frozenset({"Reshape", "Transpose", "Split", "Slice", "Squeeze", "Unsqueeze", "Gather", "Concat",
                      "Expand", "Identity", "Flatten", "DepthToSpace", "SpaceToDepth", "Pad"})
CHEAP_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Neg", "Abs", "Reshape", "Transpose", "Where", "Squeeze",
                       "Unsqueeze", "Slice", "Gather", "Concat", "Split", "Expand", "Flatten", "Identity", "Pad",
                       "Max", "Min", "Clip", "Reciprocal", "Sqrt", "Exp", "Log", "Tile", "Cast"})
SOFTMAX_OPS = frozenset({"Softmax", "LogSoftmax"})
ROUTER_OPS = frozenset({"ArgMax"})
NORM_OPS = frozenset({"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "Pow", "Sqrt", "Reciprocal",
                      "LayerNormalization", "GroupNormalization", "InstanceNormalization"})
RESIZE_OPS = frozenset({"Resize", "Upsample"})  # float-typed roi / scales inputs
SCAN_OPS = frozenset({"Exp", "Log", "CumSum", "Softplus"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
QUANT_OPS = QDQ_OPS | frozenset({"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
                                 "DynamicQuantizeLinear", "QGemm", "QLinearAdd", "QLinearMul"})

# --- precision vocabulary ------------------------------------------------------------------------

Precision = Literal["fp32", "fp16", "bf16", "int8"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "bf16", "int8")
FLOAT_PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16", "bf16")  # a float graph's compute type
IO_PRECISIONS: tuple[Precision, ...] = ("fp32", "fp16")  # a graph's input / output type
GRAPH_TARGETS = ("openvino", "onnxruntime")  # hrx export --target: the engine the graph passes choose for
PRECISION_ALIASES = {"int8-qdq": "int8", "int8-qdq-fp16": "int8", "float32": "fp32", "float16": "fp16",
                     "half": "fp16", "bfloat16": "bf16"}


def default_target(ops: str, precision: str, dynamic_batch: bool = False) -> str:
    """``hrx export``'s ``--target`` when none is given: the engine the file will most likely run on.
    An FP32 file of native ops with a static batch runs on the default CPU engine, OpenVINO: ``openvino``.
    ``--ops plugin`` files (OpenVINO cannot run them), FP16 / BF16 files (made for the GPU engines, ONNX
    Runtime CUDA and TensorRT, which have a LayerNormalization kernel) and ``--batch dynamic`` files (made
    for servers: Triton's ONNX Runtime and TensorRT backends): ``onnxruntime``. Each target's forms are the
    faster ones on their own engine (the ``profile_graph`` section of benchmarks/RESULTS.md: both files on
    both engines)."""
    return "openvino" if ops == "native" and precision == "fp32" and not dynamic_batch else "onnxruntime"


def normalize_precision(precision: str) -> Precision:
    """One of :data:`PRECISIONS` (accepts ModelInfo's ``int8-qdq`` and the spellings of :data:`PRECISION_ALIASES`)."""
    p = PRECISION_ALIASES.get(precision.lower(), precision.lower())
    if p not in PRECISIONS:
        raise HRXError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return p  # type: ignore[return-value]


# --- quantized graphs ----------------------------------------------------------------------------

def quantized_ops(model: onnx.ModelProto) -> list[str]:
    """The quantized op types (:data:`QUANT_OPS`) in ``model``'s graph and local functions, sorted."""
    ops = {n.op_type for n in model.graph.node} | {n.op_type for f in model.functions for n in f.node}
    return sorted(ops & QUANT_OPS)


def is_qdq(model: onnx.ModelProto) -> bool:
    """Whether the graph carries explicit quantization (QuantizeLinear / DequantizeLinear)."""
    return bool(set(quantized_ops(model)) & QDQ_OPS)


def float_precision(model: onnx.ModelProto) -> Precision:
    """The float type the graph's weights are in: ``bf16`` or ``fp16`` when any initializer is, else
    ``fp32`` (a Q/DQ graph answers for the ops outside its INT8 convolutions)."""
    from onnx import TensorProto

    types = {t.data_type for t in model.graph.initializer}
    if TensorProto.BFLOAT16 in types:
        return "bf16"
    if TensorProto.FLOAT16 in types:
        return "fp16"
    return "fp32"


def graph_precision(model: onnx.ModelProto) -> Precision:
    """What the graph computes in, read from the graph alone: ``int8`` when it holds Q/DQ nodes
    (:func:`is_qdq`), else :func:`float_precision`. The one answer to "what precision is this graph";
    :func:`declared_precision` is what the metadata claims."""
    return "int8" if is_qdq(model) else float_precision(model)


def declared_precision(precision: str) -> str:
    """The ``precision`` a model's metadata declares, in the words of :data:`PRECISIONS`
    (``int8-qdq`` and ``int8-qdq-fp16`` -> ``int8``); a value outside them comes back lower-cased as it
    is (a file may say anything; callers compare, they do not refuse)."""
    p = precision.strip().lower()
    return "int8" if p.startswith("int8") else PRECISION_ALIASES.get(p, p)


# --- metadata ------------------------------------------------------------------------------------

def metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's ``metadata_props`` as ``{key: value}`` (a key written twice: the last value). The one
    reader of a loaded model's metadata; :func:`hrx.interface.read_onnx_metadata` reads a file's without
    ``onnx``."""
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Replace the model's ``metadata_props`` by ``props``, in their order."""
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)


def update_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Set the keys of ``props`` in the model's ``metadata_props``: a key already there keeps its place
    and takes the new value, a new key is appended."""
    have = {p.key: p for p in model.metadata_props}
    for k, v in props.items():
        if k in have:
            have[k].value = v
        else:
            model.metadata_props.add(key=k, value=v)


# --- node helpers --------------------------------------------------------------------------------

def attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    """The value of ``node``'s attribute ``name`` (``default`` when it has none)."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset (``""`` or ``ai.onnx``; 0 when it imports none). The one
    reader of it: a valid model imports the domain once, and a model that lists it more than once
    (both spellings) is read as the newest, the version its ops were written against."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def sub_graphs(node: onnx.NodeProto) -> list:
    """``node``'s graph attributes (If / Loop / Scan bodies)."""
    from onnx import AttributeProto

    return [a for a in node.attribute if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS)]


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name (``<op>_<index>``)."""
    used = {n.name for n in model.graph.node if n.name}
    for k, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type.lower()}_{k}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)


def rename_input(model: onnx.ModelProto, old: str, new: str) -> None:
    """Every node that reads tensor ``old`` reads ``new`` instead."""
    for n in model.graph.node:
        n.input[:] = [new if i == old else i for i in n.input]


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove initializers no node (nor a subgraph's node) nor graph output reads."""
    from onnx import AttributeProto

    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for n in model.graph.node:  # initializers referenced from subgraphs stay
        for a in sub_graphs(n):
            used |= {i for sub in ([a.g] if a.type == AttributeProto.GRAPH else a.graphs)
                     for sn in sub.node for i in sn.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def drop_dead(model: onnx.ModelProto, ops: Collection[str]) -> int:
    """Remove nodes of the op types ``ops`` whose outputs nothing reads, repeatedly (a dead node can
    leave its producer dead). Returns how many went."""
    outputs = {o.name for o in model.graph.output}
    gone = 0
    while True:
        used = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if n.op_type in ops and not any(o in used for o in n.output)]
        if not dead:
            return gone
        for n in dead:
            model.graph.node.remove(n)
        gone += len(dead)


def set_nodes(model: onnx.ModelProto, nodes: Iterable[onnx.NodeProto]) -> None:
    """Replace the graph's node list by ``nodes`` (in that order)."""
    nodes = list(nodes)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


# --- the graph helper ----------------------------------------------------------------------------

class Graph:
    """Producers, consumers, initializers and constants of a graph by tensor name (top level; local
    functions are opaque). The maps are taken when it is built: build a new one after a rewrite that
    adds, removes or rewires nodes."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.g = model.graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.g.node:
            for o in n.output:
                if o:
                    self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.outputs = {o.name for o in self.g.output}
        self.inits = {t.name: t for t in self.g.initializer}
        # tensors whose value does not depend on the graph's input
        self.constants = set(self.inits) | {o for n in self.g.node if n.op_type in ("Constant", "ConstantOfShape")
                                            for o in n.output}
        self._names: set[str] | None = None
        self._counter = 0

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        """The top-level nodes, in order (a copy of the list)."""
        return list(self.g.node)

    def is_const(self, name: str) -> bool:
        """Whether ``name`` is an initializer or a ``Constant`` / ``ConstantOfShape`` output."""
        return name in self.constants

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer or a ``Constant`` node's output (None otherwise)."""
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def scalar(self, name: str) -> float | None:
        """The value of a one-element constant (None otherwise)."""
        v = self.const(name)
        return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        """The one node that reads ``name``, when exactly one does and it is not a graph output."""
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def users(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """Every node that reads one of ``node``'s outputs."""
        return [c for o in node.output for c in self.consumers.get(o, [])]

    def weight_name(self, node: onnx.NodeProto) -> str:
        """The constant a Conv / Gemm / MatMul multiplies by (``""`` when both inputs are activations)."""
        return next((i for i in node.input[1:2] if self.is_const(i)), "")

    @cached_property
    def shapes(self) -> dict[str, list[int | None]]:
        """Static shapes by tensor name after shape inference (``None`` for a symbolic dimension)."""
        import onnx

        shapes: dict[str, list[int | None]] = {}
        inferred = onnx.shape_inference.infer_shapes(self.model)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            if vi.type.tensor_type.HasField("shape"):
                shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                   for d in vi.type.tensor_type.shape.dim]
        for t in self.g.initializer:
            shapes[t.name] = list(t.dims)
        return shapes

    @cached_property
    def types(self) -> dict[str, int]:
        """Element types by tensor name, as typed in the graph (value infos, I/O, initializers)."""
        g = self.g
        types = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
        types.update({t.name: t.data_type for t in g.initializer})
        return types

    def is_float(self, name: str) -> bool:
        """Whether ``name`` is FP32 (or untyped)."""
        from onnx import TensorProto

        return self.types.get(name, TensorProto.FLOAT) == TensorProto.FLOAT

    def fresh(self, base: str) -> str:
        """A tensor / node name not yet used in the graph, made from ``base``."""
        if self._names is None:
            self._names = ({o for n in self.g.node for o in n.output} | {n.name for n in self.g.node}
                           | set(self.inits) | {i.name for i in self.g.input})
        while True:
            self._counter += 1
            name = f"{base}__hrx{self._counter}"
            if name not in self._names:
                self._names.add(name)
                return name

    def add_init(self, base: str, value: np.ndarray) -> str:
        """Add ``value`` as a new initializer; returns its name."""
        from onnx import numpy_helper

        name = self.fresh(base)
        self.g.initializer.append(numpy_helper.from_array(value, name))
        self.inits[name] = self.g.initializer[-1]
        self.constants.add(name)
        return name
