"""Which nodes of an HRX export stay in floating point, and why: a read-only analysis of the FP32 graph.

Kept float (reason -> nodes), found from the graph's structure, not from node names:

* ``router``: the MoE router logits and everything only they use (the router's private subgraph:
  its convs, activations and texture cues), ``ArgMax`` and the ``Softmax`` of the logits; in plugin
  mode the subgraph feeding ``hrx::MoETop1``'s logits input.
* ``scan``: the selective scan's decays and step sizes (:data:`hrx.export.onnx_tools.SCAN_OPS`, native mode).
* ``matmul``: activation x activation ``MatMul`` (attention ``QK^T`` / ``AV`` and the scan's chunk
  products), so the scan's decay matrices and the softmax probabilities stay float.
* ``softmax``: attention ``Softmax`` nodes (their inputs come from float ``MatMul`` + bias / mask).
* ``plugin``: ``hrx::SelectiveScan`` / ``hrx::MoETop1`` (custom domain; their ONNX local functions are
  never touched).
* ``output``: the last conv(s) before the model output, reached from the output without crossing
  another conv: the head's final conv and the exact bicubic residual conv.

:func:`near_ends` gives the stem / head convs that the fallback ladder (:data:`hrx.calibration.quantize.LADDER`)
keeps float in its later rungs, together with the last layers it adds there.
"""
from __future__ import annotations

import onnx

from hrx.export.onnx_tools import COMPUTE_OPS, SCAN_OPS, Graph, attr, declared_precision, metadata, quantized_ops


def label(g: Graph, node: onnx.NodeProto) -> str:
    """``node name`` plus the module its weight came from, e.g. ``node_conv2d_60 (head.refine)``."""
    w = g.weight_name(node)
    for suffix in (".weight", ".kernel"):
        if w.endswith(suffix) and not w.startswith(("val_", "_v_", "onnx::")):
            return f"{node.name} ({w[:-len(suffix)].removesuffix('.fused')})"
    return node.name


def private_ancestors(g: Graph, seeds: list[onnx.NodeProto], start: list[str]) -> list[onnx.NodeProto]:
    """Nodes upstream of the tensors ``start`` whose every output is used only by nodes already in the
    set (``seeds`` included): the subgraph that exists only to compute ``start``."""
    inside = {id(n) for n in seeds}
    found: list[onnx.NodeProto] = []
    todo = list(start)
    while todo:
        name = todo.pop()
        node = g.producer.get(name)
        if node is None or id(node) in inside:
            continue
        users = g.users(node)
        if not all(id(c) in inside for c in users) or any(o in g.outputs for o in node.output):
            continue
        inside.add(id(node))
        found.append(node)
        todo.extend(i for i in node.input if i and not g.is_const(i))
    return found


def router_nodes(g: Graph) -> list[onnx.NodeProto]:
    """ArgMax, the logits' other users (Softmax) and the router's private subgraph; plugin: MoETop1's logits."""
    found: list[onnx.NodeProto] = []
    for node in g.nodes:
        if node.op_type == "ArgMax":
            logits = node.input[0]
            users = g.consumers[logits]
            found += [u for u in users if all(u is not f for f in found)]
            found += private_ancestors(g, users, [logits])
        elif node.op_type == "MoETop1" and node.domain:
            found += private_ancestors(g, [node], [node.input[0]])
    return found


def output_convs(g: Graph) -> list[onnx.NodeProto]:
    """Convs reached backwards from the graph outputs without crossing another compute op."""
    found: list[onnx.NodeProto] = []
    seen: set[str] = set()
    todo = list(g.outputs)
    while todo:
        name = todo.pop()
        node = g.producer.get(name)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in COMPUTE_OPS:
            if node.op_type in ("Conv", "ConvTranspose"):
                found.append(node)
            continue
        todo.extend(i for i in node.input if i and not g.is_const(i))
    return found


def float_plan(model: onnx.ModelProto) -> dict[str, list[str]]:
    """``{reason: [node names]}`` of the nodes the default INT8 pass keeps in floating point."""
    g = Graph(model)
    plan: dict[str, list[str]] = {}
    router = router_nodes(g)
    router_ids = {id(n) for n in router}
    plan["router"] = [n.name for n in router]
    plan["scan"] = [n.name for n in g.nodes if n.op_type in SCAN_OPS and not n.domain]
    plan["softmax"] = [n.name for n in g.nodes if n.op_type == "Softmax" and id(n) not in router_ids]
    plan["matmul"] = [n.name for n in g.nodes if n.op_type == "MatMul" and not any(g.is_const(i) for i in n.input)]
    plan["plugin"] = [n.name for n in g.nodes if n.domain not in ("", "ai.onnx")]
    plan["output"] = [n.name for n in output_convs(g)]
    return {k: v for k, v in plan.items() if v}


def intensity(g: Graph, node: onnx.NodeProto) -> float | None:
    """Multiply-adds per activation element a Conv / Gemm / MatMul reads and writes: ``K * N / (Cin + N)``
    with ``N`` output channels (features) and ``K`` multiply-adds per output (Conv: ``Cin / group * kh *
    kw``; Gemm / MatMul: the weight's input side, so ``K * N / (K + N)``). ``None`` without a constant
    weight. It is what INT8 saves (arithmetic) over what its Q/DQ pairs cost (one pass over the input and
    the output): a depthwise 3x3 conv scores 4.5, a 1x1 64 -> 64 conv 32, a 3x3 32 -> 64 conv 192, a
    Gemm 32 -> 16 10.7."""
    if node.op_type not in COMPUTE_OPS or len(node.input) < 2:
        return None
    w = g.inits.get(node.input[1])
    if w is None:
        return None
    dims = [int(d) for d in w.dims]
    if node.op_type in ("Conv", "ConvTranspose") and len(dims) == 4:
        cout, k_in, kh, kw = dims
        group = attr(node, "group", 1)
        if node.op_type == "ConvTranspose":  # weight [Cin, Cout / group, kh, kw]
            cin, cout = cout, k_in * group
            k = cin // group * kh * kw
        else:
            cin, k = k_in * group, k_in * kh * kw
        return k * cout / (cin + cout)
    if node.op_type in ("Gemm", "MatMul") and len(dims) == 2:
        k, n = dims
        return k * n / (k + n)
    return None


def low_intensity_nodes(g: Graph, minimum: float) -> list[onnx.NodeProto]:
    """Conv / Gemm / MatMul nodes whose :func:`intensity` is below ``minimum`` (ONNX Runtime CPU: INT8 does
    not pay there)."""
    return [n for n in g.nodes if (r := intensity(g, n)) is not None and r < minimum]


def near_ends(g: Graph, depth: int) -> list[onnx.NodeProto]:
    """Compute ops at most ``depth`` compute layers from the graph input or from the output (counting
    the op itself). ``depth=2`` on an HRX model: ``stem.0``, ``stem.2``, ``head.upscale``, ``head.refine``
    and the bicubic residual conv."""
    found: dict[str, onnx.NodeProto] = {}
    for forward in (True, False):
        best: dict[str, int] = {}
        todo = [(t.name, 0) for t in (g.model.graph.input if forward else g.model.graph.output)]
        while todo:
            name, crossed = todo.pop()
            nodes = g.consumers.get(name, []) if forward else [g.producer[name]] if name in g.producer else []
            for node in nodes:
                c = crossed + (node.op_type in COMPUTE_OPS)
                if c > depth or best.get(node.name, depth + 1) <= c:
                    continue
                best[node.name] = c
                if node.op_type in COMPUTE_OPS:
                    found[node.name] = node
                nxt = node.output if forward else [i for i in node.input if i and not g.is_const(i)]
                todo.extend((t, c) for t in nxt)
    return [n for n in g.nodes if n.name in found]


def is_quantized(model: onnx.ModelProto) -> str:
    """A reason string when ``model`` already holds quantized ops or its metadata says it is INT8, else ``""``
    (an FP16 / BF16 export is not quantized: :func:`hrx.export.onnx_tools.float_precision` tells it)."""
    declared = metadata(model).get("precision", "fp32")
    if declared_precision(declared) == "int8":
        return f"its metadata says precision={declared}"
    ops = quantized_ops(model)
    if ops:
        return f"it already has {', '.join(ops)} nodes"
    return ""
