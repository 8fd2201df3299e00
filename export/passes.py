"""Graph passes on the exported ONNX model for the CPU engines: time in arithmetic, not in moving data.
Each pass keeps the model's weights and its math; ``hrx export`` runs them after the simplifier
(``optimize``), and ``tests/test_passes.py`` holds each one against the unfused model.

Which passes run depends on the engine the file is exported for (``hrx export --target``, recorded as
``graph_target`` in the metadata; :data:`TARGET_PASSES`): a formulation that one engine runs fast can
be slow on the other. ``onnxruntime``: the channel LayerNorm as ``LayerNormalization`` between
transposes, flips as ``Slice``. ``openvino``: the channel LayerNorm stays over axis 1 of NCHW, which
OpenVINO's CPU plugin runs in the layout of its convolutions (the transposes around a
``LayerNormalization`` cost it two layout conversions, ``Reorder``, of the whole map each), and flips are
a ``Gather``, which it runs faster than a ``Slice`` with step -1 (``docs/cpu-engines.md``).

- ``fuse_channel_layernorm``: the exporter's channel LayerNorm (``ReduceMean, Sub, Pow, ReduceMean,
  Add, Sqrt, Reciprocal, Mul`` over axis 1 of NCHW, eight passes over the map) becomes one
  ``LayerNormalization`` in channels-last. Where the normalised map only feeds a window partition
  (optionally through the shift's roll), the LayerNorm moves behind the partition's transpose, whose
  last axis is already the channel, so it costs no transpose at all; elsewhere it sits between a
  ``Transpose`` pair.
- ``merge_transposes``: ``Transpose -> Transpose`` becomes one; identity transposes disappear.
- ``cancel_transposes``: a ``Transpose`` that, with the Transposes and Reshapes before it, only
  re-labels an earlier tensor (every element keeps its place in memory: for example
  ``[B,HW,C] -> [B,C,HW] -> [B,C,H,W] -> [B,H,W,C]``, a sum taken channels-last that a channels-last
  LayerNorm reads again) becomes a ``Reshape`` of that tensor; what the earlier ones fed elsewhere
  stays.
- ``gelu_for_ort``: the exporter writes GELU (opset < 20) as ``x * (0.5 * (1 + erf(x / sqrt 2)))``,
  a form ONNX Runtime's Gelu fusion does not match; ``(x * (1 + erf(x / sqrt 2))) * 0.5`` is the same
  value (a product by 0.5 is exact) and ORT runs it as one ``Gelu`` kernel. Standard ops either way.

- ``layernorm_div`` (openvino): the exporter's ``s * Reciprocal(Sqrt(v + eps))`` of a LayerNorm becomes
  ``s / Sqrt(v + eps)``, one node fewer.
- ``flip_as_gather`` (openvino): a ``Slice`` that reverses one whole axis (step -1, ``torch.flip``)
  becomes a ``Gather`` of that axis with the reversed indices (a constant). Exact.

Constant folding is the simplifier's (:func:`hrx.export.onnx_export.simplify`); no pass repeats it.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from hrx.export.onnx_tools import GRAPH_TARGETS, Graph, attr, drop_dead, drop_unused_initializers, opset, set_nodes


@dataclass
class PassReport:
    """How many rewrites each pass made (``hrx export`` prints it)."""
    counts: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.counts.items()) or "none"


def _axes(g: Graph, node: onnx.NodeProto) -> list[int] | None:
    """The ``axes`` of a Reduce node (attribute before opset 18, input after), or None if unknown."""
    for a in node.attribute:
        if a.name == "axes":
            return list(a.ints)
    if len(node.input) > 1 and node.input[1]:
        v = g.const(node.input[1])
        return None if v is None else [int(x) for x in np.atleast_1d(v)]
    return None


# ----------------------------------------------------------------------------------------------
# fuse_channel_layernorm


@dataclass
class _LayerNormMatch:
    x: str  # normalised input
    y: str  # normalised output
    eps: float
    axis: int
    rank: int
    channels: int
    nodes: list[onnx.NodeProto]


def _match_layernorm(g: Graph, last: onnx.NodeProto) -> _LayerNormMatch | None:
    """``last`` is the closing ``Mul(s, 1/sqrt(v + eps))`` or ``Div(s, sqrt(v + eps))`` of
    ``s = x - mean(x, axis)``, ``v = mean(s * s, axis)`` (keepdims); every intermediate used only inside."""
    if last.op_type not in ("Mul", "Div") or len(last.input) != 2:
        return None
    for s_name, r_name in ((last.input[0], last.input[1]),) + (((last.input[1], last.input[0]),) if last.op_type == "Mul" else ()):
        sub, rnode = g.producer.get(s_name), g.producer.get(r_name)
        if sub is None or rnode is None or sub.op_type != "Sub":
            continue
        x, m = sub.input
        mean = g.producer.get(m)
        if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != x or attr(mean, "keepdims", 1) != 1:
            continue
        axes = _axes(g, mean)
        rank = len(g.shapes.get(x) or [])
        if axes is None or len(axes) != 1 or rank < 2:
            continue
        axis = axes[0] % rank
        chain = [rnode]
        if last.op_type == "Mul":
            if rnode.op_type != "Reciprocal":
                continue
            sqrt = g.producer.get(rnode.input[0])
            chain.append(sqrt)
        else:
            sqrt = rnode
        if sqrt is None or sqrt.op_type != "Sqrt":
            continue
        add = g.producer.get(sqrt.input[0])
        if add is None or add.op_type != "Add":
            continue
        var_name, eps = None, None
        for a, b in ((add.input[0], add.input[1]), (add.input[1], add.input[0])):
            if g.scalar(b) is not None and a in g.producer:
                var_name, eps = a, g.scalar(b)
        var = g.producer.get(var_name) if var_name else None
        if var is None or var.op_type != "ReduceMean" or attr(var, "keepdims", 1) != 1 \
                or [a % rank for a in (_axes(g, var) or [])] != [axis]:
            continue
        sq = g.producer.get(var.input[0])
        if sq is None or not ((sq.op_type == "Pow" and sq.input[0] == s_name and g.scalar(sq.input[1]) == 2.0)
                              or (sq.op_type == "Mul" and list(sq.input) == [s_name, s_name])):
            continue
        if any(nm == x or nm in g.outputs for nm in (s_name, sq.output[0], var.output[0], add.output[0])):
            continue
        inner = [sub, sq, var, add, sqrt] + (chain[:1] if last.op_type == "Mul" else [])
        # every intermediate used only inside the pattern; the mean may be shared (the simplifier
        # merges equal channel means): then it stays for its other users
        members = {id(n) for n in inner} | {id(last)}
        if all(id(c) in members for c in g.consumers.get(m, [])) and m not in g.outputs:
            inner = [mean] + inner
        if any(id(c) not in members for n in inner for o in n.output for c in g.consumers.get(o, [])):
            continue
        if any(o in g.outputs for n in inner for o in n.output):
            continue
        shape = g.shapes[x]
        if shape[axis] is None:
            continue
        return _LayerNormMatch(x=x, y=last.output[0], eps=eps, axis=axis, rank=rank, channels=int(shape[axis]),
                               nodes=inner + [last])
    return None


_PER_PIXEL = {"Slice", "Concat", "Reshape"}


def _partition_region(g: Graph, ln: _LayerNormMatch) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]] | None:
    """Nodes between the LayerNorm's output and the transposes that put its channel axis last, when
    that is all that consumes it (the window partition, with or without the shift's roll): Slice /
    Concat along other axes and Reshapes that keep every axis up to the channel one. Returns
    (region nodes, terminal transposes) or None."""
    region: list[onnx.NodeProto] = []
    terminals: list[onnx.NodeProto] = []
    seen: set[int] = set()
    inside = {ln.y}
    frontier = [ln.y]
    while frontier:
        name = frontier.pop()
        if name in g.outputs:
            return None
        for node in g.consumers.get(name, []):
            if id(node) in seen:
                continue
            seen.add(id(node))
            op = node.op_type
            if op == "Transpose":
                perm = list(attr(node, "perm", []))
                if node.input[0] != name or not perm or perm[-1] != ln.axis:
                    return None
                terminals.append(node)
                continue
            if op not in _PER_PIXEL:
                return None
            if op == "Slice":
                axes = g.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
                if axes is None or ln.axis in [int(a) % ln.rank for a in np.atleast_1d(axes)] \
                        or (len(node.input) > 4 and node.input[4] and g.const(node.input[4]) is None):
                    return None
                if any(g.const(i) is None for i in node.input[1:3]):
                    return None
            elif op == "Concat":
                if int(attr(node, "axis", 0)) % ln.rank == ln.axis:
                    return None
            else:  # Reshape keeping every axis up to the channel one
                src, dst = g.shapes.get(node.input[0]), g.shapes.get(node.output[0])
                if not src or not dst or None in src or None in dst or src[:ln.axis + 1] != dst[:ln.axis + 1] \
                        or g.const(node.input[1]) is None:
                    return None
            region.append(node)
            inside.add(node.output[0])
            frontier.append(node.output[0])
    # every data input of a region node comes from the LayerNorm output or from inside the region
    for node in region:
        data = node.input if node.op_type == "Concat" else node.input[:1]
        if any(i not in inside for i in data):
            return None
    return (region, terminals) if terminals else None


def fuse_channel_layernorm(model: onnx.ModelProto, opset_min: int = 17) -> int:
    """Rewrite every matched channel LayerNorm as ``LayerNormalization`` in channels-last (see the
    module docstring). Needs opset >= 17. Returns how many were rewritten."""
    if opset(model) < opset_min:
        return 0
    done = 0
    while True:  # one at a time: each rewrite invalidates the maps
        g = Graph(model)
        rewrote = False
        for node in list(g.g.node):
            ln = _match_layernorm(g, node)
            if ln is None:
                continue
            _rewrite_layernorm(g, ln)
            done += 1
            rewrote = True
            break
        if not rewrote:
            return done


def _same_scope(new: onnx.NodeProto, old: onnx.NodeProto) -> onnx.NodeProto:
    """``new`` with ``old``'s node metadata (the module scope the exporter recorded); returns ``new``."""
    new.metadata_props.extend(old.metadata_props)
    return new


def _rewrite_layernorm(g: Graph, ln: _LayerNormMatch) -> None:
    scale = g.add_init("ln_scale", np.ones(ln.channels, np.float32))
    bias = g.add_init("ln_bias", np.zeros(ln.channels, np.float32))
    nodes = list(g.g.node)
    position = nodes.index(ln.nodes[-1])
    removed = {id(n) for n in ln.nodes}
    region = _partition_region(g, ln)
    insert: dict[int, list[onnx.NodeProto]] = defaultdict(list)  # after node index -> new nodes
    if region is not None:
        # the map feeds only the partition: normalise after its transpose (channel last already)
        body, terminals = region
        for node in body:
            for k, name in enumerate(node.input):
                if name == ln.y:
                    node.input[k] = ln.x
        for t in terminals:
            if t.input[0] == ln.y:
                t.input[0] = ln.x
            out = t.output[0]
            moved = g.fresh(out)
            t.output[0] = moved
            norm = helper.make_node("LayerNormalization", [moved, scale, bias], [out], axis=-1, epsilon=ln.eps,
                                    name=g.fresh("hrx_layernorm"))
            insert[nodes.index(t)].append(_same_scope(norm, ln.nodes[-1]))
    else:
        perm = [a for a in range(ln.rank) if a != ln.axis] + [ln.axis]
        inverse = [perm.index(a) for a in range(ln.rank)]
        t_in, t_norm = g.fresh(ln.x + "_cl"), g.fresh(ln.y + "_cl")
        insert[position] += [_same_scope(n, ln.nodes[-1]) for n in (
            helper.make_node("Transpose", [ln.x], [t_in], perm=perm, name=g.fresh("hrx_ln_to_cl")),
            helper.make_node("LayerNormalization", [t_in, scale, bias], [t_norm], axis=-1, epsilon=ln.eps,
                             name=g.fresh("hrx_layernorm")),
            helper.make_node("Transpose", [t_norm], [ln.y], perm=inverse, name=g.fresh("hrx_ln_to_cf")))]
    out: list[onnx.NodeProto] = []
    for k, node in enumerate(nodes):
        if id(node) not in removed:
            out.append(node)
        out.extend(insert.get(k, []))
    set_nodes(g.model, out)
    drop_unused_initializers(g.model)


# ----------------------------------------------------------------------------------------------
# merge_transposes


def merge_transposes(model: onnx.ModelProto) -> int:
    """``Transpose(p1) -> Transpose(p2)`` (the first used only there) becomes ``Transpose(p1[p2])``;
    identity transposes are bypassed. Returns how many transposes went."""
    g = Graph(model)
    gone: set[int] = set()
    rename: dict[str, str] = {}
    for node in g.g.node:
        if node.op_type != "Transpose":
            continue
        src = g.producer.get(node.input[0])
        p2 = list(attr(node, "perm", []))
        if src is not None and src.op_type == "Transpose" and id(src) not in gone \
                and g.only_consumer(src.output[0]) is node and p2:
            p1 = list(attr(src, "perm", []))
            if p1:
                del node.attribute[:]
                node.attribute.append(helper.make_attribute("perm", [p1[i] for i in p2]))
                node.input[0] = src.input[0]
                gone.add(id(src))
                p2 = [p1[i] for i in p2]
        if p2 == list(range(len(p2))) and node.output[0] not in g.outputs:
            rename[node.output[0]] = node.input[0]
            gone.add(id(node))
    if not gone:
        return 0

    def resolve(name: str) -> str:
        while name in rename:
            name = rename[name]
        return name

    keep = [n for n in g.g.node if id(n) not in gone]
    for n in keep:
        for k, name in enumerate(n.input):
            n.input[k] = resolve(name)
    set_nodes(g.model, keep)
    return len(gone)


# ----------------------------------------------------------------------------------------------
# cancel_transposes


LAYOUT_OPS = ("Transpose", "Reshape")


def _layout_op(node: onnx.NodeProto) -> bool:
    return node.op_type in LAYOUT_OPS and node.domain in ("", "ai.onnx")


def _relabels(g: Graph, start: str, chain: list[onnx.NodeProto]) -> bool:
    """Whether running ``chain`` (Transposes / Reshapes, in order) on ``start`` keeps every element's
    flat position, i.e. the chain is a reshape of ``start``. Checked on an index tensor."""
    shape = g.shapes.get(start)
    if not shape or None in shape:
        return False
    idx = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    for node in chain:
        if node.op_type == "Transpose":
            perm = list(attr(node, "perm", [])) or list(range(idx.ndim))[::-1]
            idx = idx.transpose(perm)
        else:
            out = g.shapes.get(node.output[0])
            if not out or None in out or int(np.prod(out)) != idx.size:
                return False
            idx = idx.reshape(out)
    return bool(np.array_equal(idx.reshape(-1), np.arange(idx.size)))


def cancel_transposes(model: onnx.ModelProto, depth: int = 4, max_elements: int = 1 << 24) -> int:
    """Replace each ``Transpose`` that, read back through at most ``depth`` Transposes / Reshapes, is a
    reshape of an earlier tensor by that ``Reshape`` (the farthest such tensor); Transposes and
    Reshapes left without consumers go. Returns how many Transposes became Reshapes."""
    g = Graph(model)
    done = 0
    for node in g.g.node:
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx"):
            continue
        out_shape = g.shapes.get(node.output[0])
        if not out_shape or None in out_shape or int(np.prod(out_shape)) > max_elements:
            continue
        chain, source, best = [node], node.input[0], None
        for _ in range(depth):
            prev = g.producer.get(source)
            if prev is None or not _layout_op(prev):
                break
            chain.insert(0, prev)
            source = prev.input[0]
            if _relabels(g, source, chain):
                best = source
        if best is None:
            continue
        shape = g.add_init("relabel_shape", np.array(out_shape, dtype=np.int64))
        node.op_type = "Reshape"
        del node.attribute[:]
        del node.input[:]
        node.input.extend([best, shape])
        done += 1
    if done:
        drop_dead(model, LAYOUT_OPS)
        drop_unused_initializers(model)
    return done


# ----------------------------------------------------------------------------------------------
# gelu_for_ort


def _scalar_step(g: Graph, tensor: str, op: str, value: float) -> tuple[onnx.NodeProto, str] | None:
    """``(node, c)`` when the one consumer of ``tensor`` is ``op(tensor, c)`` with ``c`` the scalar ``value``."""
    node = g.only_consumer(tensor)
    if node is None or node.op_type != op or len(node.input) != 2:
        return None
    other = node.input[1] if node.input[0] == tensor else node.input[0]
    return (node, other) if g.scalar(other) == value else None


def gelu_for_ort(model: onnx.ModelProto) -> int:
    """Reorder ``Mul(x, Mul(0.5, Add(Erf(Div(x, sqrt 2)), 1)))`` into
    ``Mul(Mul(x, Add(...)), 0.5)`` (see the module docstring). Returns how many GELUs were reordered."""
    g = Graph(model)
    done = 0
    for erf in g.g.node:
        if erf.op_type != "Erf":
            continue
        div = g.producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or not np.isclose(g.scalar(div.input[1]) or 0.0, np.sqrt(2.0)):
            continue
        x = div.input[0]
        add = _scalar_step(g, erf.output[0], "Add", 1.0)
        half_mul = _scalar_step(g, add[0].output[0], "Mul", 0.5) if add else None
        if half_mul is None:
            continue
        (add, _), (half_mul, half) = add, half_mul
        last = g.only_consumer(half_mul.output[0])
        if last is None or last.op_type != "Mul" or sorted(last.input) != sorted([x, half_mul.output[0]]):
            continue
        del half_mul.input[:]
        half_mul.input.extend([x, add.output[0]])  # x * (1 + erf)
        del last.input[:]
        last.input.extend([half_mul.output[0], half])  # ... * 0.5
        done += 1
    return done


# ----------------------------------------------------------------------------------------------
# layernorm_div


def layernorm_div(model: onnx.ModelProto) -> int:
    """``Mul(s, Reciprocal(Sqrt(v + eps)))`` of every matched LayerNorm (:func:`_match_layernorm`)
    becomes ``Div(s, Sqrt(v + eps))``. Returns how many."""
    g = Graph(model)
    done = 0
    gone: set[int] = set()
    for node in g.g.node:
        ln = _match_layernorm(g, node)
        if ln is None or node.op_type != "Mul":
            continue
        recip = next(n for n in ln.nodes if n.op_type == "Reciprocal")
        sub = next(n for n in ln.nodes if n.op_type == "Sub")
        node.op_type = "Div"
        del node.input[:]
        node.input.extend([sub.output[0], recip.input[0]])
        gone.add(id(recip))
        done += 1
    if done:
        set_nodes(model, [n for n in g.g.node if id(n) not in gone])
    return done


# ----------------------------------------------------------------------------------------------
# flip_as_gather


def _full_reverse_axis(g: Graph, node: onnx.NodeProto) -> int | None:
    """The axis a ``Slice`` reverses whole (one axis, step -1, from the last element past the first), or None."""
    if node.op_type != "Slice" or len(node.input) < 5 or not all(node.input[1:5]):
        return None
    starts, ends, axes, steps = (g.const(i) for i in node.input[1:5])
    shape = g.shapes.get(node.input[0])
    if any(v is None for v in (starts, ends, axes, steps)) or not shape or None in shape:
        return None
    starts, ends, axes, steps = (np.atleast_1d(v).astype(np.int64) for v in (starts, ends, axes, steps))
    if len(axes) != 1 or int(steps[0]) != -1:
        return None
    axis = int(axes[0]) % len(shape)
    n = int(shape[axis])
    start, end = int(starts[0]), int(ends[0])
    start = min(start + n if start < 0 else start, n - 1)
    end = end + n if end < 0 else end
    return axis if start == n - 1 and end < 0 else None


def flip_as_gather(model: onnx.ModelProto) -> int:
    """Every ``Slice`` that reverses a whole axis becomes ``Gather(x, [n-1 .. 0], axis)``. Returns how many."""
    g = Graph(model)
    done = 0
    for node in g.g.node:
        axis = _full_reverse_axis(g, node)
        if axis is None:
            continue
        n = int(g.shapes[node.input[0]][axis])
        index = g.add_init("reversed", np.arange(n - 1, -1, -1, dtype=np.int64))
        data = node.input[0]
        node.op_type = "Gather"
        del node.input[:]
        node.input.extend([data, index])
        del node.attribute[:]
        node.attribute.append(helper.make_attribute("axis", axis))
        done += 1
    if done:
        drop_unused_initializers(model)
    return done


# ----------------------------------------------------------------------------------------------


TARGET_PASSES = {
    "onnxruntime": ("fuse_channel_layernorm", "merge_transposes", "cancel_transposes", "gelu_for_ort"),
    "openvino": ("layernorm_div", "flip_as_gather", "merge_transposes", "cancel_transposes", "gelu_for_ort"),
}
assert set(TARGET_PASSES) == set(GRAPH_TARGETS)
PASSES = TARGET_PASSES["onnxruntime"]
PASS_TABLE = {"fuse_channel_layernorm": fuse_channel_layernorm, "merge_transposes": merge_transposes,
              "cancel_transposes": cancel_transposes, "gelu_for_ort": gelu_for_ort,
              "layernorm_div": layernorm_div, "flip_as_gather": flip_as_gather}


def optimize(model: onnx.ModelProto, passes: tuple[str, ...] = PASSES) -> PassReport:
    """Run the named passes in order, in place, and check the result. Returns what each did."""
    report = PassReport()
    for name in passes:
        report.counts[name] = PASS_TABLE[name](model)
    onnx.checker.check_model(model, full_check=True)
    return report
