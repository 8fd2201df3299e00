"""Precision in the graph: FP16 / BF16 ONNX with explicit FP32 islands.

``hrx export --precision fp16`` converts the FP32 export with onnxconverter-common's
``convert_float_to_float16`` (a maintained converter: it rewrites initializers, value types and
inserts ``Cast`` nodes around a *node block list*). hrx computes that block list, the FP32
islands, from the graph itself:

* ``softmax``: every Softmax and what computes its input, back through cheap element-wise and
  shape ops to and including the MatMul/Conv that produces the attention logits;
* ``router``: the MoE router logits (ArgMax, ``hrx::MoETop1``'s first input) the same way;
* ``norm``: norm statistics: ReduceMean/ReduceSum, Pow (with the ``x - mean`` feeding it), Sqrt,
  Reciprocal, and (Layer|Group|Instance)Normalization;
* ``scan``: the scan's decays and step sizes: Exp, Log, CumSum, Softplus and the projection that
  computes ``dt`` (Softplus' input, back to its Conv/MatMul); ``dt * A`` and the segment sums follow;
* ``follow``: cheap ops whose float inputs all come from islands join them, so a chain such as
  ``ReduceMean -> Add(eps) -> Sqrt -> Reciprocal`` stays FP32 without round trips through FP16.

Graph inputs and outputs stay FP32 unless ``io="fp16"``. ``hrx::`` plugin nodes keep FP32
``dt/A/D`` and router logits; their FP16-capable inputs (``x, B, C`` of SelectiveScan, ``experts`` of
MoETop1) and outputs are FP16, which the plugins' autotune combinations accept; their ONNX local
functions cast to FP32 inside, so ONNX Runtime runs the same file. ``bf16`` is the same plan with
BFLOAT16 in place of FLOAT16 (initializers converted from the FP32 originals).

The file's metadata records ``precision``, ``io_precision`` and ``fp32_islands`` (JSON: rule ->
node names).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hrx.errors import HRXError, MissingDependencyError, check_choice
from hrx.export.onnx_tools import (CHEAP_OPS, COMPUTE_OPS, FLOAT_PRECISIONS, IO_PRECISIONS, NORM_OPS, PLUGIN_DOMAIN,
                                   RESIZE_OPS, ROUTER_OPS, SCAN_OPS, SOFTMAX_OPS, Graph, attr, drop_dead,
                                   metadata, name_nodes, opset, rename_input, set_metadata, update_metadata)

FP16_MAX = 65504.0
HEAVY_OPS = COMPUTE_OPS | {"Einsum"}  # where an island's walk back from a softmax / router / dt stops
# hrx:: plugin inputs that may be FP16 (the rest stay FP32), as in the plugins' autotune combinations
PLUGIN_HALF_INPUTS = {"SelectiveScan": (0, 3, 4), "MoETop1": (1,)}


@dataclass
class PrecisionPlan:
    precision: str
    io: str
    islands: dict[str, list[str]] = field(default_factory=dict)  # rule -> node names

    @property
    def fp32_nodes(self) -> set[str]:
        """Names of every node kept in FP32, over all rules."""
        return {n for names in self.islands.values() for n in names}

    def summary(self) -> str:
        """One line: the precision and the island sizes per rule."""
        if self.precision == "fp32":
            return "precision: fp32"
        counts = ", ".join(f"{rule} {len(names)}" for rule, names in self.islands.items() if names)
        return f"precision: {self.precision} (I/O {self.io}); FP32 islands: {counts or 'none'}"


def _walk_up(g: Graph, name: str, chosen: set[str], include_heavy: bool, depth: int = 8) -> None:
    """Add the producers of tensor ``name`` back through cheap ops (and the first heavy op)."""
    node = g.producer.get(name)
    if node is None or depth == 0 or g.is_const(name) or node.name in chosen:
        return
    if node.op_type in HEAVY_OPS:
        if include_heavy:
            chosen.add(node.name)
        return
    if node.op_type not in CHEAP_OPS:
        return
    chosen.add(node.name)
    for i in node.input:
        if i and g.is_float(i):
            _walk_up(g, i, chosen, include_heavy, depth - 1)


def find_islands(model: onnx.ModelProto) -> dict[str, list[str]]:
    """The FP32 islands of an FP32 graph: ``{rule: [node names]}`` (see the module docstring)."""
    g = Graph(model)
    rules: dict[str, set[str]] = {"softmax": set(), "router": set(), "norm": set(), "scan": set(), "plugin": set(),
                                  "resize": set()}
    for n in g.nodes:
        if n.domain == PLUGIN_DOMAIN:
            rules["plugin"].add(n.name)
            if n.op_type == "MoETop1" and n.input:
                _walk_up(g, n.input[0], rules["router"], include_heavy=True)
            continue
        if n.op_type in SOFTMAX_OPS:
            rules["softmax"].add(n.name)
            _walk_up(g, n.input[0], rules["softmax"], include_heavy=True)
        elif n.op_type in ROUTER_OPS:
            rules["router"].add(n.name)
            _walk_up(g, n.input[0], rules["router"], include_heavy=True)
        elif n.op_type in NORM_OPS:
            rules["norm"].add(n.name)
            if n.op_type == "Pow":  # (x - mean) ** 2: the difference too
                p = g.producer.get(n.input[0])
                if p is not None and p.op_type in ("Sub", "Add"):
                    rules["norm"].add(p.name)
        elif n.op_type in RESIZE_OPS:
            rules["resize"].add(n.name)
        elif n.op_type in SCAN_OPS:
            rules["scan"].add(n.name)
            if n.op_type == "Softplus":  # dt: back to its projection
                _walk_up(g, n.input[0], rules["scan"], include_heavy=True)
    chosen = set().union(*(names for rule, names in rules.items() if rule != "plugin"))  # plugins write half
    follow: set[str] = set()
    changed = True
    while changed:
        changed = False
        for n in g.nodes:
            if n.name in chosen or n.op_type not in CHEAP_OPS or not n.output or not g.is_float(n.output[0]):
                continue
            sources = [i for i in n.input if i and not g.is_const(i) and g.is_float(i)]
            if sources and all(g.producer.get(i) is not None and g.producer[i].name in chosen for i in sources):
                chosen.add(n.name)
                follow.add(n.name)
                changed = True
    rules["follow"] = follow
    order = {n.name: k for k, n in enumerate(g.nodes)}
    seen: set[str] = set()
    out = {}
    for rule, names in rules.items():  # each node under its first rule
        out[rule] = sorted(names - seen, key=order.get)
        seen |= names
    return out


def _split_shared_initializers(model: onnx.ModelProto, island: set[str]) -> None:
    """Give island nodes their own copy of an initializer that non-island nodes share, so each copy
    gets one type (the converter keeps an island's initializers FP32 and converts the others)."""
    g = model.graph
    users = Graph(model).consumers
    for init in list(g.initializer):
        nodes = users.get(init.name, [])
        inside = [n for n in nodes if n.name in island]
        if not inside or len(inside) == len(nodes) or init.data_type != TensorProto.FLOAT:
            continue
        copy = TensorProto()
        copy.CopyFrom(init)
        copy.name = init.name + "__fp32"
        g.initializer.append(copy)
        for n in inside:
            for k, i in enumerate(n.input):
                if i == init.name:
                    n.input[k] = copy.name


def _import_converter():
    try:
        from onnxconverter_common import float16
    except ImportError as e:
        raise MissingDependencyError(f"--precision fp16/bf16 needs onnxconverter-common ({e}); "
                                     "pip install onnxconverter-common") from None
    return float16


def _fold_cast_pairs(model: onnx.ModelProto) -> None:
    """``x32 -> Cast(16) -> Cast(32)`` between two islands: use ``x32`` directly (no FP16 round trip)."""
    g = Graph(model)
    remove = []
    for n in g.nodes:
        if n.op_type != "Cast" or attr(n, "to") != TensorProto.FLOAT:
            continue
        first = g.producer.get(n.input[0])
        if first is None or first.op_type != "Cast" or attr(first, "to") not in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
            continue
        if first.input[0] not in g.producer or n.output[0] in g.outputs:
            continue
        rename_input(model, n.output[0], first.input[0])
        remove.append(n)
    for n in remove:
        model.graph.node.remove(n)
    drop_dead(model, ("Cast",))


def _fix_island_outputs(model: onnx.ModelProto) -> None:
    """With FP32 I/O, a graph output made by an island node comes out of the converter as
    ``island -> Cast(16) -> output`` typed FLOAT16: drop that Cast so the island writes FP32 itself."""
    g = Graph(model)
    for out in model.graph.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        cast = g.producer.get(out.name)
        if cast is None or cast.op_type != "Cast" or attr(cast, "to") != TensorProto.FLOAT16:
            continue
        src = g.producer.get(cast.input[0])
        if src is None:
            continue
        src.output[:] = [out.name if o == cast.input[0] else o for o in src.output]
        rename_input(model, cast.input[0], out.name)
        model.graph.node.remove(cast)
        out.type.tensor_type.elem_type = TensorProto.FLOAT


def _plugin_half_io(model: onnx.ModelProto, half: int) -> None:
    """Let ``hrx::`` nodes take their FP16-capable inputs and give their output in half precision:
    drop the converter's Cast(32) on those inputs and its Cast(16) after the output; their local
    functions cast to FP32 inside and back to the input's type (CastLike) at the end."""
    g = model.graph
    producer = Graph(model).producer
    drop = []
    for n in [n for n in g.node if n.domain == PLUGIN_DOMAIN and n.op_type in PLUGIN_HALF_INPUTS]:
        for k in PLUGIN_HALF_INPUTS[n.op_type]:
            cast = producer.get(n.input[k])
            if cast is not None and cast.op_type == "Cast" and attr(cast, "to") == TensorProto.FLOAT:
                n.input[k] = cast.input[0]  # the converter's Cast(32) of a half tensor
            else:  # an FP32 island tensor (e.g. B/C from the dt projection): give the plugin half
                name = f"{n.input[k]}__half_{n.name}"
                g.node.insert(list(g.node).index(n), helper.make_node(
                    "Cast", [n.input[k]], [name], to=half, name=f"{n.name}_half_input_{k}"))
                n.input[k] = name
        consumers = [m for m in g.node if n.output[0] in m.input]
        if len(consumers) == 1 and consumers[0].op_type == "Cast" and attr(consumers[0], "to") == half:
            after = consumers[0]  # the converter's Cast(16) of the output: the plugin now writes half itself
            n.output[0], after_out = after.output[0], n.output[0]
            drop.append(after)
            for vi in g.value_info:
                if vi.name == after_out:
                    g.value_info.remove(vi)
                    break
        else:  # FP32 consumers: the half output goes through one Cast(32)
            out = n.output[0]
            n.output[0] = f"{out}__half"
            g.node.insert(list(g.node).index(n) + 1, helper.make_node(
                "Cast", [n.output[0]], [out], to=TensorProto.FLOAT, name=f"{n.name}_output_float"))
    for n in drop:
        g.node.remove(n)
    drop_dead(model, ("Cast",))
    for f in model.functions:
        if f.domain == PLUGIN_DOMAIN and f.name in PLUGIN_HALF_INPUTS:
            _function_casts(f)


def _function_casts(f: onnx.FunctionProto) -> None:
    """Body runs in FP32 whatever the input types; the output takes the first half-capable input's type."""
    if any(n.name.startswith("hrx_precision_cast") for n in f.node):
        return
    renamed = {i: f"{i}__f32" for i in f.input}
    body = [helper.make_node("Cast", [i], [renamed[i]], to=TensorProto.FLOAT, name=f"hrx_precision_cast_{k}")
            for k, i in enumerate(f.input)]
    for n in f.node:
        n.input[:] = [renamed.get(i, i) for i in n.input]
    out = f.output[0]
    like = f.input[PLUGIN_HALF_INPUTS[f.name][0]]
    for n in f.node:
        n.output[:] = [f"{o}__f32" if o == out else o for o in n.output]
    tail = helper.make_node("CastLike", [f"{out}__f32", like], [out], name="hrx_precision_castlike")
    nodes = body + list(f.node) + [tail]
    del f.node[:]
    f.node.extend(nodes)


def bf16_tensor(name: str, arr: np.ndarray) -> onnx.TensorProto:
    """A BFLOAT16 tensor of ``arr`` (rounded to nearest even) in ``raw_data``. Not ``int32_data`` (what
    ``helper.make_tensor`` writes for a list of values): OpenVINO's ONNX reader takes those as numbers, not
    bit patterns (0.5, stored as 0x3F00, is read as 16128.0) and the model outputs NaN."""
    bits = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2")  # [same shape] bfloat16 bit patterns
    return helper.make_tensor(name, TensorProto.BFLOAT16, arr.shape, bits.tobytes(), raw=True)


def _to_bf16(model: onnx.ModelProto, originals: dict[str, np.ndarray]) -> None:
    """FLOAT16 -> BFLOAT16 everywhere; half initializers re-made from their FP32 originals."""
    g = model.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT16:
            vi.type.tensor_type.elem_type = TensorProto.BFLOAT16
    for k, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT16:
            src = originals.get(t.name)
            arr = src if src is not None else numpy_helper.to_array(t).astype(np.float32)
            g.initializer[k].CopyFrom(bf16_tensor(t.name, arr))
    for n in g.node:
        for a in n.attribute:
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT16:
                a.i = TensorProto.BFLOAT16
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT16:
                a.t.CopyFrom(bf16_tensor(a.t.name, numpy_helper.to_array(a.t)))


ALL_RULES = ("softmax", "router", "norm", "scan", "plugin", "resize", "follow")
NAIVE_RULES = ("plugin", "resize")  # what any valid conversion needs: the whole graph in half otherwise


def convert_precision(model: onnx.ModelProto, precision: str = "fp16", io: str = "fp32",
                      extra_fp32: Iterable[str] = (), rules: Iterable[str] = ALL_RULES
                      ) -> tuple[onnx.ModelProto, PrecisionPlan]:
    """An FP32 ``model`` in ``precision`` with the FP32 islands of :func:`find_islands` (only the
    ``rules`` given; :data:`NAIVE_RULES` gives the naive whole-graph conversion) plus the node names
    in ``extra_fp32``. Returns ``(new model, plan)``; the input is not modified."""
    check_choice("--precision", precision, FLOAT_PRECISIONS)
    check_choice("--io", io, IO_PRECISIONS)
    plan = PrecisionPlan(precision, "fp32" if precision == "fp32" else io)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if precision == "fp32":
        return out, plan
    version = opset(out)
    if precision == "bf16" and version < 22:
        raise HRXError(f"--precision bf16 needs opset 22 or newer (ONNX Conv takes bfloat16 from opset 22); "
                       f"this graph is opset {version}: export it with --opset 22")
    if any(t.data_type == TensorProto.FLOAT16 for t in out.graph.initializer):
        raise HRXError("the model already holds FLOAT16 weights; convert an FP32 export")
    float16 = _import_converter()
    name_nodes(out)
    out = onnx.shape_inference.infer_shapes(out)
    rules = set(rules)
    plan.islands = {r: names for r, names in find_islands(out).items() if r in rules}
    extra = [n for n in extra_fp32 if n not in plan.fp32_nodes]
    if extra:
        plan.islands["extra"] = extra
    island = plan.fp32_nodes
    _split_shared_initializers(out, island)
    for n in out.graph.node:  # the model's own casts to float (masks, .float()) compute in half outside islands
        if n.op_type == "Cast" and n.name not in island and attr(n, "to") == TensorProto.FLOAT:
            next(a for a in n.attribute if a.name == "to").i = TensorProto.FLOAT16
    originals = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer if t.data_type == TensorProto.FLOAT}
    meta = metadata(out)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # per-weight clamping warnings; values beyond FP16 are clamped on purpose
        out = float16.convert_float_to_float16(out, min_positive_val=2.0 ** -24, max_finite_val=FP16_MAX,
                                               keep_io_types=(io == "fp32"), op_block_list=[],
                                               node_block_list=sorted(island), check_fp16_ready=False)
    _fold_cast_pairs(out)
    if io == "fp32":
        _fix_island_outputs(out)
    _plugin_half_io(out, TensorProto.FLOAT16)
    if precision == "bf16":
        _to_bf16(out, originals)
    set_metadata(out, meta)
    set_precision_props(out, plan)
    return out, plan


def set_precision_props(model: onnx.ModelProto, plan: PrecisionPlan) -> None:
    """Record ``plan`` in the model's metadata: ``precision``, ``io_precision`` and ``fp32_islands``."""
    update_metadata(model, {"precision": plan.precision, "io_precision": plan.io,
                            "fp32_islands": json.dumps(plan.islands, sort_keys=True)})

