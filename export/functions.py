"""ONNX definitions of the ``hrx`` custom-domain ops: schemas and local-function bodies.

A ``--ops plugin`` export keeps ``hrx::SelectiveScan`` and ``hrx::MoETop1`` as single nodes and
ships, in the same file, an ONNX *local function* (``FunctionProto``, domain ``hrx``) for each,
whose body is the standard-op decomposition. Why local functions rather than an ONNX Runtime
custom-op library: ONNX Runtime inlines local functions itself, so the very same file runs on the
CPU with nothing to compile or register, while TensorRT's ONNX parser maps a node to a registered
plugin of the same name (see ``hrx.runtime.trt``), so the engine uses the fused GPU kernel.

Op contracts (float32 / float16):

* ``SelectiveScan(x [b, L, H, P], dt [b, L, H], A [H], B [b, L, N], C [b, L, N], D [H]) -> y [b, L, H, P]``,
  attribute ``chunk`` (int; ``L % chunk == 0``): the SSD chunked scan of ``hrx.blocks.ssm``.
* ``MoETop1(logits [B, E, H, W], experts [B, E, C, H, W]) -> y [B, C, H, W]``:
  ``softmax(logits)[argmax] * experts[argmax]`` per pixel, ties to the lowest index.

Both carry ``plugin_version`` and ``plugin_namespace`` string attributes for TensorRT.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

DOMAIN = "hrx"
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
        OS("SelectiveScan", DOMAIN, DOMAIN_VERSION, doc=__doc__ or "",
           inputs=[OS.FormalParameter(n, "T2" if n in ("dt", "A", "D") else "T") for n in ("x", "dt", "A", "B", "C", "D")],
           outputs=[OS.FormalParameter("y", "T")], type_constraints=T,
           attributes=[OS.Attribute("chunk", OS.AttrType.INT, "chunk length", required=False), *plugin]),
        OS("MoETop1", DOMAIN, DOMAIN_VERSION, doc=__doc__ or "",
           inputs=[OS.FormalParameter("logits", "T2"), OS.FormalParameter("experts", "T")],
           outputs=[OS.FormalParameter("y", "T")], type_constraints=T, attributes=plugin),
    ]
    for s in schemas:
        try:
            defs.get_schema(s.name, DOMAIN_VERSION, DOMAIN)
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


def _segsum(g: _Body, a: str, size: str) -> str:
    """``a [..., S] -> [..., S, S]``: ``out[i, j] = sum(a[j+1 .. i])`` for i >= j, -inf above."""
    ones = g("ConstantOfShape", g("Concat", size, size, axis=0), value=numpy_helper.from_array(np.ones(1, np.float32)))
    strict = g("Cast", g("Trilu", ones, g.const(-1), upper=0), to=TensorProto.BOOL)
    lower = g("Cast", g("Trilu", ones, g.const(0), upper=0), to=TensorProto.BOOL)
    rank_shape = g("Concat", g("Shape", a), size, axis=0)
    x = g("Expand", g("Unsqueeze", a, g.const([-1])), rank_shape)  # x[..., i, j] = a[i]
    zero = g.const(0.0, np.float32)
    x = g("CumSum", g("Where", strict, x, zero), g.const(-2))
    return g("Where", lower, x, g.const(-np.inf, np.float32))


def selective_scan_function(opset: int = 18) -> onnx.FunctionProto:
    g = _Body()
    sx, sB = g("Shape", "x"), g("Shape", "B")
    b, L, H, P, N = g.dim(sx, 0), g.dim(sx, 1), g.dim(sx, 2), g.dim(sx, 3), g.dim(sB, 2)
    # chunk length from the node's attribute
    g.nodes.append(helper.make_node("Constant", [], ["chunk_scalar"]))
    g.nodes[-1].attribute.append(onnx.AttributeProto(name="value_int", ref_attr_name="chunk", type=onnx.AttributeProto.INT))
    T = g("Reshape", "chunk_scalar", g.const([1]))
    c = g("Div", L, T)
    xf, dtf, Bf, Cf = (g("Cast", v, to=TensorProto.FLOAT) for v in ("x", "dt", "B", "C"))
    Af, Df = g("Cast", "A", to=TensorProto.FLOAT), g("Cast", "D", to=TensorProto.FLOAT)
    xs = g("Mul", xf, g("Unsqueeze", dtf, g.const([3])))  # [b, L, H, P]
    xs = g("Transpose", g("Reshape", xs, g("Concat", b, c, T, H, P, axis=0)), perm=[0, 3, 1, 2, 4])  # [b, H, c, T, P]
    a = g("Transpose", g("Reshape", g("Mul", dtf, Af), g("Concat", b, c, T, H, axis=0)), perm=[0, 3, 1, 2])  # [b, H, c, T]
    Bc = g("Reshape", Bf, g("Concat", b, c, T, N, axis=0))  # [b, c, T, N]
    Cc = g("Reshape", Cf, g("Concat", b, c, T, N, axis=0))
    a_cum = g("CumSum", a, g.const(-1))
    decay = g("Exp", _segsum(g, a, T))  # [b, H, c, T, T]
    cb = g("MatMul", Cc, g("Transpose", Bc, perm=[0, 1, 3, 2]))  # [b, c, T, T]
    y_diag = g("MatMul", g("Mul", g("Unsqueeze", cb, g.const([1])), decay), xs)  # [b, H, c, T, P]
    last = g("Sub", T, g.const([1]))
    to_end = g("Squeeze", g("Gather", decay, last, axis=3), g.const([3]))  # [b, H, c, T]
    Bt = g("Transpose", g("Unsqueeze", Bc, g.const([1])), perm=[0, 1, 2, 4, 3])  # [b, 1, c, N, T]
    states = g("MatMul", Bt, g("Mul", xs, g("Unsqueeze", to_end, g.const([-1]))))  # [b, H, c, N, P]
    chunk_total = g("Squeeze", g("Gather", a_cum, last, axis=3), g.const([3]))  # [b, H, c]
    chunk_decay = g("Pad", chunk_total, g.const([0, 0, 1, 0, 0, 0]))  # [b, H, c + 1]
    c1 = g("Add", c, g.const([1]))
    carry = g("Exp", _segsum(g, chunk_decay, c1))  # [b, H, c + 1, c + 1]
    NP = g("Mul", N, P)
    zeros = g("ConstantOfShape", g("Concat", b, H, g.const([1]), N, P, axis=0),
              value=numpy_helper.from_array(np.zeros(1, np.float32)))
    states = g("Reshape", g("Concat", zeros, states, axis=2), g("Concat", b, H, c1, NP, axis=0))
    prev = g("Slice", g("MatMul", carry, states), g.const([0]), c, g.const([2]))  # [b, H, c, N*P]
    prev = g("Reshape", prev, g("Concat", b, H, c, N, P, axis=0))
    y_off = g("Mul", g("MatMul", g("Unsqueeze", Cc, g.const([1])), prev), g("Unsqueeze", g("Exp", a_cum), g.const([-1])))
    y = g("Transpose", g("Add", y_diag, y_off), perm=[0, 2, 3, 1, 4])  # [b, c, T, H, P]
    y = g("Reshape", y, g("Concat", b, L, H, P, axis=0))
    y = g("Add", y, g("Mul", g("Reshape", Df, g("Concat", g.const([1, 1]), H, g.const([1]), axis=0)), xf))
    g.nodes.append(helper.make_node("CastLike", [y, "x"], ["y"]))
    return helper.make_function(DOMAIN, "SelectiveScan", ["x", "dt", "A", "B", "C", "D"], ["y"], g.nodes,
                                [helper.make_opsetid("", opset)], attributes=["chunk", *PLUGIN_ATTRS])


def moe_top1_function(opset: int = 18) -> onnx.FunctionProto:
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
    return helper.make_function(DOMAIN, "MoETop1", ["logits", "experts"], ["y"], g.nodes,
                                [helper.make_opsetid("", opset)], attributes=list(PLUGIN_ATTRS))


FUNCTIONS = {"SelectiveScan": selective_scan_function, "MoETop1": moe_top1_function}


def attach_functions(model: onnx.ModelProto) -> list[str]:
    """Add the local function of every hrx op the graph uses (once each); return their names."""
    used = sorted({n.op_type for n in model.graph.node if n.domain == DOMAIN})
    have = {(f.domain, f.name) for f in model.functions}
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    for name in used:
        if (DOMAIN, name) not in have:
            model.functions.append(FUNCTIONS[name](opset))
    if used and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return used
