"""Graph passes on the exported ONNX model for ONNX Runtime's CPU path: time in arithmetic, not in
moving data. Each pass keeps the model's weights and its math; ``hrx export`` runs them after the
simplifier (``optimize``), and ``tests/test_passes.py`` holds each one against the unfused model.

- ``fold_constants``: ``Shape`` of statically shaped tensors and every node whose inputs are all
  constants become initializers (what onnxsim does; here too when onnxsim is missing or fails).
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
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass
class PassReport:
    """How many rewrites each pass made (``hrx export`` prints it)."""
    counts: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.counts.items()) or "none"


class _Graph:
    """Producer / consumer maps and constant lookup over a ``GraphProto`` (rebuilt after each pass)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.g = model.graph
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.g.node:
            for o in n.output:
                self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.outputs = {o.name for o in self.g.output}
        self.inits = {t.name: t for t in self.g.initializer}
        self.shapes: dict[str, list[int | None]] = {}
        inferred = onnx.shape_inference.infer_shapes(model)
        for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
            if vi.type.tensor_type.HasField("shape"):
                self.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None
                                        for d in vi.type.tensor_type.shape.dim]
        for t in self.g.initializer:
            self.shapes[t.name] = list(t.dims)
        self._names = ({o for n in self.g.node for o in n.output} | {n.name for n in self.g.node} | set(self.inits)
                       | {i.name for i in self.g.input})
        self._counter = 0

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def fresh(self, base: str) -> str:
        while True:
            self._counter += 1
            name = f"{base}__hrx{self._counter}"
            if name not in self._names:
                self._names.add(name)
                return name

    def add_init(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.g.initializer.append(numpy_helper.from_array(value, name))
        self.inits[name] = self.g.initializer[-1]
        return name


def _axes(g: _Graph, node: onnx.NodeProto) -> list[int] | None:
    """The ``axes`` of a Reduce node (attribute before opset 18, input after), or None if unknown."""
    for a in node.attribute:
        if a.name == "axes":
            return list(a.ints)
    if len(node.input) > 1 and node.input[1]:
        v = g.const(node.input[1])
        return None if v is None else [int(x) for x in np.atleast_1d(v)]
    return None


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _scalar(g: _Graph, name: str) -> float | None:
    v = g.const(name)
    return float(v.reshape(-1)[0]) if v is not None and v.size == 1 else None


# ----------------------------------------------------------------------------------------------
# fold_constants


_NEVER_FOLD = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


def fold_constants(model: onnx.ModelProto, max_elements: int = 1 << 22) -> int:
    """Replace shape-only and constant-only nodes by initializers. Returns how many nodes went."""
    from onnx.reference import ReferenceEvaluator

    g = _Graph(model)
    known: dict[str, np.ndarray] = {}
    for name, t in g.inits.items():
        known[name] = numpy_helper.to_array(t)
    folded: list[onnx.NodeProto] = []
    for node in g.g.node:
        if node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_FOLD:
            continue
        if node.op_type == "Shape" and node.input[0] not in known:
            shape = g.shapes.get(node.input[0])
            if shape is None or any(d is None or d <= 0 for d in shape):
                continue
            start, end = _attr(node, "start", 0), _attr(node, "end", None)
            known[node.output[0]] = np.array(shape[start:end], dtype=np.int64)
            folded.append(node)
            continue
        if node.op_type == "Constant":
            value = g.const(node.output[0])
            if value is None:
                continue
            known[node.output[0]] = value
            folded.append(node)
            continue
        inputs = [i for i in node.input if i]
        if not inputs or not all(i in known for i in inputs) or any(_sub_graphs(node)):
            continue
        try:
            feeds = {f"i{k}": known[i] for k, i in enumerate(inputs)}
            inner = helper.make_node(node.op_type, [f"i{k}" if i else "" for k, i in enumerate(node.input)],
                                     [f"o{k}" for k in range(len(node.output))], domain=node.domain,
                                     **{a.name: helper.get_attribute_value(a) for a in node.attribute})
            one = helper.make_model(helper.make_graph(
                [inner], "fold", [helper.make_tensor_value_info(f"i{k}", helper.np_dtype_to_tensor_dtype(v.dtype),
                                                                 v.shape) for k, v in enumerate(feeds.values())],
                [helper.make_tensor_value_info(f"o{k}", onnx.TensorProto.UNDEFINED, None)
                 for k in range(len(node.output))]), opset_imports=model.opset_import)
            outs = ReferenceEvaluator(one).run(None, feeds)
        except Exception:  # noqa: BLE001 - an op the reference evaluator cannot run stays in the graph
            continue
        if sum(np.asarray(o).size for o in outs) > max_elements:
            continue
        for name, value in zip(node.output, outs):
            known[name] = np.asarray(value)
        folded.append(node)
    if not folded:
        return 0
    gone = {id(n) for n in folded}
    keep = [n for n in g.g.node if id(n) not in gone]
    needed = {i for n in keep for i in n.input} | g.outputs
    new_inits = [numpy_helper.from_array(known[o], o) for n in folded for o in n.output
                 if o in needed and o not in g.inits]
    del g.g.node[:]
    g.g.node.extend(keep)
    g.g.initializer.extend(new_inits)
    _drop_unused_initializers(model)
    return len(folded)


def _sub_graphs(node: onnx.NodeProto) -> list:
    return [a for a in node.attribute if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)]


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    for n in model.graph.node:  # initializers referenced from subgraphs stay
        for a in _sub_graphs(n):
            used |= {i for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs)
                     for sn in sub.node for i in sn.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


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


def _match_layernorm(g: _Graph, last: onnx.NodeProto) -> _LayerNormMatch | None:
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
        if mean is None or mean.op_type != "ReduceMean" or mean.input[0] != x or _attr(mean, "keepdims", 1) != 1:
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
            if _scalar(g, b) is not None and a in g.producer:
                var_name, eps = a, _scalar(g, b)
        var = g.producer.get(var_name) if var_name else None
        if var is None or var.op_type != "ReduceMean" or _attr(var, "keepdims", 1) != 1 \
                or [a % rank for a in (_axes(g, var) or [])] != [axis]:
            continue
        sq = g.producer.get(var.input[0])
        if sq is None or not ((sq.op_type == "Pow" and sq.input[0] == s_name and _scalar(g, sq.input[1]) == 2.0)
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


def _partition_region(g: _Graph, ln: _LayerNormMatch) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]] | None:
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
                perm = list(_attr(node, "perm", []))
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
                if int(_attr(node, "axis", 0)) % ln.rank == ln.axis:
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
    if _opset(model) < opset_min:
        return 0
    done = 0
    while True:  # one at a time: each rewrite invalidates the maps
        g = _Graph(model)
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


def _opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _rewrite_layernorm(g: _Graph, ln: _LayerNormMatch) -> None:
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
            insert[nodes.index(t)].append(norm)
    else:
        perm = [a for a in range(ln.rank) if a != ln.axis] + [ln.axis]
        inverse = [perm.index(a) for a in range(ln.rank)]
        t_in, t_norm = g.fresh(ln.x + "_cl"), g.fresh(ln.y + "_cl")
        insert[position] += [
            helper.make_node("Transpose", [ln.x], [t_in], perm=perm, name=g.fresh("hrx_ln_to_cl")),
            helper.make_node("LayerNormalization", [t_in, scale, bias], [t_norm], axis=-1, epsilon=ln.eps,
                             name=g.fresh("hrx_layernorm")),
            helper.make_node("Transpose", [t_norm], [ln.y], perm=inverse, name=g.fresh("hrx_ln_to_cf"))]
    out: list[onnx.NodeProto] = []
    for k, node in enumerate(nodes):
        if id(node) not in removed:
            out.append(node)
        out.extend(insert.get(k, []))
    del g.g.node[:]
    g.g.node.extend(out)
    _drop_unused_initializers(g.model)


# ----------------------------------------------------------------------------------------------
# merge_transposes


def merge_transposes(model: onnx.ModelProto) -> int:
    """``Transpose(p1) -> Transpose(p2)`` (the first used only there) becomes ``Transpose(p1[p2])``;
    identity transposes are bypassed. Returns how many transposes went."""
    g = _Graph(model)
    gone: set[int] = set()
    rename: dict[str, str] = {}
    for node in g.g.node:
        if node.op_type != "Transpose":
            continue
        src = g.producer.get(node.input[0])
        p2 = list(_attr(node, "perm", []))
        if src is not None and src.op_type == "Transpose" and id(src) not in gone \
                and g.only_consumer(src.output[0]) is node and p2:
            p1 = list(_attr(src, "perm", []))
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
    del g.g.node[:]
    g.g.node.extend(keep)
    return len(gone)


# ----------------------------------------------------------------------------------------------
# cancel_transposes


def _layout_ops(g: _Graph, node: onnx.NodeProto) -> bool:
    return node.op_type in ("Transpose", "Reshape") and node.domain in ("", "ai.onnx")


def _relabels(g: _Graph, start: str, chain: list[onnx.NodeProto]) -> bool:
    """Whether running ``chain`` (Transposes / Reshapes, in order) on ``start`` keeps every element's
    flat position, i.e. the chain is a reshape of ``start``. Checked on an index tensor."""
    shape = g.shapes.get(start)
    if not shape or None in shape:
        return False
    idx = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    for node in chain:
        if node.op_type == "Transpose":
            perm = list(_attr(node, "perm", [])) or list(range(idx.ndim))[::-1]
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
    g = _Graph(model)
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
            if prev is None or not _layout_ops(g, prev):
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
        _drop_dead_layout_nodes(model)
    return done


def _drop_dead_layout_nodes(model: onnx.ModelProto) -> None:
    while True:
        g = _Graph(model)
        dead = [n for n in g.g.node if _layout_ops(g, n)
                and all(not g.consumers.get(o) and o not in g.outputs for o in n.output)]
        if not dead:
            break
        gone = {id(n) for n in dead}
        keep = [n for n in g.g.node if id(n) not in gone]
        del g.g.node[:]
        g.g.node.extend(keep)
    _drop_unused_initializers(model)


# ----------------------------------------------------------------------------------------------
# gelu_for_ort


def gelu_for_ort(model: onnx.ModelProto) -> int:
    """Reorder ``Mul(x, Mul(0.5, Add(Erf(Div(x, sqrt 2)), 1)))`` into
    ``Mul(Mul(x, Add(...)), 0.5)`` (see the module docstring). Returns how many GELUs were reordered."""
    g = _Graph(model)
    done = 0
    for erf in g.g.node:
        if erf.op_type != "Erf":
            continue
        div = g.producer.get(erf.input[0])
        if div is None or div.op_type != "Div" or not np.isclose(_scalar(g, div.input[1]) or 0.0, np.sqrt(2.0)):
            continue
        x = div.input[0]
        add = g.only_consumer(erf.output[0])
        if add is None or add.op_type != "Add":
            continue
        one = add.input[1] if add.input[0] == erf.output[0] else add.input[0]
        if _scalar(g, one) != 1.0:
            continue
        half_mul = g.only_consumer(add.output[0])
        if half_mul is None or half_mul.op_type != "Mul":
            continue
        half = half_mul.input[1] if half_mul.input[0] == add.output[0] else half_mul.input[0]
        if _scalar(g, half) != 0.5:
            continue
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


PASSES = ("fold_constants", "fuse_channel_layernorm", "merge_transposes", "cancel_transposes", "gelu_for_ort")


def optimize(model: onnx.ModelProto, passes: tuple[str, ...] = PASSES) -> PassReport:
    """Run the named passes in order, in place, and check the result. Returns what each did."""
    table = {"fold_constants": fold_constants, "fuse_channel_layernorm": fuse_channel_layernorm,
             "merge_transposes": merge_transposes, "cancel_transposes": cancel_transposes,
             "gelu_for_ort": gelu_for_ort}
    report = PassReport()
    for name in passes:
        report.counts[name] = table[name](model)
    onnx.checker.check_model(model, full_check=True)
    return report
