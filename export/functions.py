"""ONNX definitions of the ``hrx`` custom-domain ops: schemas and local-function bodies.

A ``--ops plugin`` export keeps ``hrx::SelectiveScan`` and ``hrx::MoETop1`` as single nodes and
ships, in the same file, an ONNX *local function* (``FunctionProto``, domain ``hrx``) for each,
whose body is the standard-op decomposition. Why local functions rather than an ONNX Runtime
custom-op library: ONNX Runtime inlines local functions itself, so the very same file runs on the
CPU with nothing to compile or register, while TensorRT's ONNX parser maps a node to a registered
plugin of the same name (see ``hrx.runtime.trt``), so the engine uses the fused GPU kernel.

Op contracts (float32 / float16):

* ``SelectiveScan(x [b, H, P, L], dt [b, H, L], A [H], B [b, N, L], C [b, N, L], D [H]) -> y [b, H, P, L]``,
  attribute ``chunk`` (int; ``L % chunk == 0``): the SSD chunked scan of ``hrx.blocks.ssm``, channels
  first (the sequence axis last).
* ``MoETop1(logits [B, E, H, W], experts [B, E, C, H, W]) -> y [B, C, H, W]``:
  ``softmax(logits)[argmax] * experts[argmax]`` per pixel, ties to the lowest index.

Both carry ``plugin_version`` and ``plugin_namespace`` string attributes for TensorRT.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hrx.export.onnx_tools import PLUGIN_DOMAIN, opset

DOMAIN_VERSION = 1
PLUGIN_ATTRS = ("plugin_version", "plugin_namespace")


def register_schemas() -> None:
    """Register OpSchemas for the hrx ops so the exporter (onnxscript) can emit them. Idempotent."""
    from onnx import defs

    OS = defs.OpSchema
    # T: the half-capable tensors; T2: dt/A/D and the router logits, FP32 in `--precision fp16` graphs
    T = [("T", ["tensor(float)", "tensor(float16)"], "float32 or float16"),
         ("T2", ["tensor(float)", "tensor(float16)"], "float32 (or float16)")]
    plugin = [OS.Attribute("plugin_version", OS.AttrType.STRING, "TensorRT plugin version", required=False),
              OS.Attribute("plugin_namespace", OS.AttrType.STRING, "TensorRT plugin namespace", required=False)]
    schemas = [
        OS("SelectiveScan", PLUGIN_DOMAIN, DOMAIN_VERSION, doc=__doc__ or "",
           inputs=[OS.FormalParameter(n, "T2" if n in ("dt", "A", "D") else "T") for n in ("x", "dt", "A", "B", "C", "D")],
           outputs=[OS.FormalParameter("y", "T")], type_constraints=T,
           attributes=[OS.Attribute("chunk", OS.AttrType.INT, "chunk length", required=False), *plugin]),
        OS("MoETop1", PLUGIN_DOMAIN, DOMAIN_VERSION, doc=__doc__ or "",
           inputs=[OS.FormalParameter("logits", "T2"), OS.FormalParameter("experts", "T")],
           outputs=[OS.FormalParameter("y", "T")], type_constraints=T, attributes=plugin),
    ]
    for s in schemas:
        try:
            defs.get_schema(s.name, DOMAIN_VERSION, PLUGIN_DOMAIN)
        except defs.SchemaError:
            defs.register_schema(s)


class _Body:
    """Tiny builder for function bodies: unique value names, node list."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self._ids = itertools.count()

    def __call__(self, op: str, *inputs: str, **attrs) -> str:
        out = f"t{next(self._ids)}_{op.lower()}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], **attrs))
        return out

    def const(self, value, dtype=np.int64) -> str:
        out = f"c{next(self._ids)}"
        self.nodes.append(helper.make_node("Constant", [], [out], value=numpy_helper.from_array(np.asarray(value, dtype=dtype))))
        return out

    def dim(self, shape: str, i: int) -> str:
        """``shape[i:i+1]`` as a 1-D int64 tensor."""
        return self("Slice", shape, self.const([i]), self.const([i + 1]))


def _segsum_exp(g: _Body, a: str, size: str) -> str:
    """``a [..., S] -> [..., S, S]``: ``out[i, j] = exp(sum(a[j+1 .. i]))`` for i >= j, 0 above the
    diagonal (``hrx.blocks.ssm._segsum_exp``: masks applied by multiplication)."""
    ones = g("ConstantOfShape", g("Concat", size, size, axis=0), value=numpy_helper.from_array(np.ones(1, np.float32)))
    strict, lower = g("Trilu", ones, g.const(-1), upper=0), g("Trilu", ones, g.const(0), upper=0)
    x = g("CumSum", g("Mul", g("Unsqueeze", a, g.const([-1])), strict), g.const(-2))
    return g("Mul", g("Exp", x), lower)


def _chunk_decay(g: _Body, a_cum: str, size: str) -> str:
    """``a_cum [..., T] -> [..., T, T]``: ``out[j, i] = exp(a_cum[i] - a_cum[j])`` for j <= i, 0 below
    the diagonal (``hrx.blocks.ssm._chunk_decay``: an additive 0 / -inf mask)."""
    neg = g("ConstantOfShape", g("Concat", size, size, axis=0),
            value=numpy_helper.from_array(np.full(1, -np.inf, np.float32)))
    neg = g("Trilu", neg, g.const(-1), upper=0)
    diff = g("Sub", g("Unsqueeze", a_cum, g.const([-2])), g("Unsqueeze", a_cum, g.const([-1])))
    return g("Exp", g("Add", diff, neg))


def selective_scan_function(opset: int = 18) -> onnx.FunctionProto:
    """The body of ``selective_scan_chunked`` (P-major: ``y^T = x^T @ M^T``), channels first."""
    g = _Body()
    sx, sB = g("Shape", "x"), g("Shape", "B")
    b, H, P, L, N = g.dim(sx, 0), g.dim(sx, 1), g.dim(sx, 2), g.dim(sx, 3), g.dim(sB, 1)
    # chunk length from the node's attribute
    g.nodes.append(helper.make_node("Constant", [], ["chunk_scalar"]))
    g.nodes[-1].attribute.append(onnx.AttributeProto(name="value_int", ref_attr_name="chunk", type=onnx.AttributeProto.INT))
    T = g("Reshape", "chunk_scalar", g.const([1]))
    c = g("Div", L, T)
    xf, dtf, Bf, Cf = (g("Cast", v, to=TensorProto.FLOAT) for v in ("x", "dt", "B", "C"))
    Af, Df = g("Cast", "A", to=TensorProto.FLOAT), g("Cast", "D", to=TensorProto.FLOAT)
    xs = g("Reshape", g("Mul", xf, g("Unsqueeze", dtf, g.const([2]))), g("Concat", b, H, P, c, T, axis=0))
    xs = g("Transpose", xs, perm=[0, 1, 3, 2, 4])  # [b, H, c, P, T]
    a = g("Reshape", g("Mul", dtf, g("Reshape", Af, g.const([-1, 1]))), g("Concat", b, H, c, T, axis=0))  # [b, H, c, T]
    Bt = g("Transpose", g("Reshape", Bf, g("Concat", b, N, c, T, axis=0)), perm=[0, 2, 3, 1])  # [b, c, T, N]
    Cc = g("Transpose", g("Reshape", Cf, g("Concat", b, N, c, T, axis=0)), perm=[0, 2, 1, 3])  # [b, c, N, T]
    a_cum = g("CumSum", a, g.const(-1))  # running sums over T
    decay = _chunk_decay(g, a_cum, T)  # [b, H, c, T, T]: [j, i]
    y_diag = g("MatMul", xs, g("Mul", g("Unsqueeze", g("MatMul", Bt, Cc), g.const([1])), decay))  # [b, H, c, P, T]
    last = g("Sub", T, g.const([1]))
    a_end = g("Gather", a_cum, last, axis=3)  # [b, H, c, 1]
    to_end = g("Unsqueeze", g("Exp", g("Sub", a_end, a_cum)), g.const([3]))  # [b, H, c, 1, T]
    states = g("MatMul", g("Mul", xs, to_end), g("Unsqueeze", Bt, g.const([1])))  # [b, H, c, P, N]
    chunk_decay = g("Pad", g("Squeeze", a_end, g.const([3])), g.const([0, 0, 1, 0, 0, 0]))  # [b, H, c + 1]
    c1 = g("Add", c, g.const([1]))
    carry = _segsum_exp(g, chunk_decay, c1)  # [b, H, c + 1, c + 1]
    carry = g("Slice", carry, g.const([0, 1]), g("Concat", c, c1, axis=0), g.const([2, 3]))  # [b, H, c, c]
    NP = g("Mul", N, P)
    prev = g("MatMul", carry, g("Reshape", states, g("Concat", b, H, c, NP, axis=0)))  # [b, H, c, P*N]
    prev = g("Reshape", prev, g("Concat", b, H, c, P, N, axis=0))
    y_off = g("Mul", g("MatMul", prev, g("Unsqueeze", Cc, g.const([1]))), g("Unsqueeze", g("Exp", a_cum), g.const([3])))
    y = g("Transpose", g("Add", y_diag, y_off), perm=[0, 1, 3, 2, 4])  # [b, H, P, c, T]
    y = g("Reshape", y, g("Concat", b, H, P, L, axis=0))
    y = g("Add", y, g("Mul", g("Reshape", Df, g("Concat", g.const([1]), H, g.const([1, 1]), axis=0)), xf))
    g.nodes.append(helper.make_node("CastLike", [y, "x"], ["y"]))
    return helper.make_function(PLUGIN_DOMAIN, "SelectiveScan", ["x", "dt", "A", "B", "C", "D"], ["y"], g.nodes,
                                [helper.make_opsetid("", opset)], attributes=["chunk", *PLUGIN_ATTRS])


def moe_top1_function(opset: int = 18) -> onnx.FunctionProto:
    """The ONNX local function of ``hrx::MoETop1`` (softmax, top-1 mask, weighted sum), in standard ops of ``opset``."""
    g = _Body()
    lf = g("Cast", "logits", to=TensorProto.FLOAT)
    probs = g("Softmax", lf, axis=1)
    idx = g("ArgMax", lf, axis=1, keepdims=1, select_last_index=0)  # [B, 1, H, W]
    E = g.dim(g("Shape", "logits"), 1)
    e = g("Reshape", g("Range", g.const(0), g("Squeeze", E, g.const([0])), g.const(1)), g.const([1, -1, 1, 1]))
    gate = g("Mul", g("Cast", g("Equal", e, idx), to=TensorProto.FLOAT), probs)  # [B, E, H, W]
    prod = g("Mul", g("Cast", "experts", to=TensorProto.FLOAT), g("Unsqueeze", gate, g.const([2])))
    y = g("ReduceSum", prod, g.const([1]), keepdims=0)
    g.nodes.append(helper.make_node("CastLike", [y, "experts"], ["y"]))
    return helper.make_function(PLUGIN_DOMAIN, "MoETop1", ["logits", "experts"], ["y"], g.nodes,
                                [helper.make_opsetid("", opset)], attributes=list(PLUGIN_ATTRS))


FUNCTIONS = {"SelectiveScan": selective_scan_function, "MoETop1": moe_top1_function}


def attach_functions(model: onnx.ModelProto) -> list[str]:
    """Add the local function of every hrx op the graph uses (once each); return their names."""
    used = sorted({n.op_type for n in model.graph.node if n.domain == PLUGIN_DOMAIN})
    have = {(f.domain, f.name) for f in model.functions}
    version = opset(model)
    for name in used:
        if (PLUGIN_DOMAIN, name) not in have:
            model.functions.append(FUNCTIONS[name](version))
    if used and not any(o.domain == PLUGIN_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(PLUGIN_DOMAIN, DOMAIN_VERSION))
    return used
