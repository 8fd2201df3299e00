"""Minimal repros: one op written two ways, on OpenVINO's CPU plugin and ONNX Runtime, interleaved.

    python benchmarks/ov_formulations.py --runs 300

Each graph is ``Conv 1x1 -> the op -> Conv 1x1`` on a ``[1, 32, 64, 64]`` map, one thread, FP32:

* ``ln_cl``: channel LayerNorm as ``Transpose -> LayerNormalization(axis -1) -> Transpose``
  (``hrx export --target onnxruntime``); ``ln_div``: over axis 1 of NCHW, ``ReduceMean / Sub / Div``
  (``--target openvino``); ``ln_recip``: the exporter's own ``* Reciprocal(Sqrt(..))``;
* ``flip_slice``: a flip of the flattened map as ``Slice`` with step -1 (``--target onnxruntime``);
  ``flip_gather``: the same flip as a ``Gather`` of reversed indices (``--target openvino``);
  ``flip_none``: the reshapes alone;
* ``cumsum_op``: a cumulative sum over runs of 32 (the scan's chunks) as ``CumSum``; ``cumsum_matmul``: the
  same sum as a ``MatMul`` with an upper-triangular matrix of ones;
* ``softmax_op``: a softmax over rows of 64 (an 8x8 attention window's logits) as ``Softmax``;
  ``softmax_exp``: the same as ``ReduceMax / Sub / Exp / ReduceSum / Div``.

Prints, per graph, the layer types of OpenVINO's compiled graph (``Reorder`` = a layout conversion it
inserted) and the 10th-percentile ms of each engine. Saved as ``ov_formulations`` (``benchmarks/results.py``).
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

C, H, W = 32, 64, 64


def graphs() -> dict[str, object]:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def const(name, value):
        return numpy_helper.from_array(np.asarray(value), name)

    def model(nodes, inits):
        w1, w2 = ((rng.standard_normal((C, C, 1, 1)) * 0.1).astype(np.float32) for _ in range(2))
        nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"])] + nodes + [helper.make_node("Conv", ["mid", "w2"], ["y"])]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, W])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, H, W])],
                              [const("w1", w1), const("w2", w2)] + inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])

    def ln_cl():
        return model([helper.make_node("Transpose", ["c1"], ["t"], perm=[0, 2, 3, 1]),
                      helper.make_node("LayerNormalization", ["t", "s", "b"], ["n"], axis=-1, epsilon=1e-6),
                      helper.make_node("Transpose", ["n"], ["mid"], perm=[0, 3, 1, 2])],
                     [const("s", np.ones(C, np.float32)), const("b", np.zeros(C, np.float32))])

    def ln_axis1(div: bool):
        nodes = [helper.make_node("ReduceMean", ["c1", "ax"], ["m"]), helper.make_node("Sub", ["c1", "m"], ["s"]),
                 helper.make_node("Mul", ["s", "s"], ["sq"]), helper.make_node("ReduceMean", ["sq", "ax"], ["v"]),
                 helper.make_node("Add", ["v", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["sd"])]
        nodes += [helper.make_node("Div", ["s", "sd"], ["mid"])] if div else [
            helper.make_node("Reciprocal", ["sd"], ["r"]), helper.make_node("Mul", ["s", "r"], ["mid"])]
        return model(nodes, [const("ax", np.array([1], np.int64)), const("eps", np.array(1e-6, np.float32))])

    def flip(kind: str):
        nodes = [helper.make_node("Reshape", ["c1", "flat"], ["r"])]
        inits = [const("flat", np.array([1, C, H * W], np.int64)), const("map", np.array([1, C, H, W], np.int64))]
        if kind == "slice":
            nodes.append(helper.make_node("Slice", ["r", "st", "en", "ax", "sp"], ["f"]))
            inits += [const("st", np.array([-1], np.int64)), const("en", np.array([-(2 ** 63)], np.int64)),
                      const("ax", np.array([2], np.int64)), const("sp", np.array([-1], np.int64))]
        elif kind == "gather":
            nodes.append(helper.make_node("Gather", ["r", "idx"], ["f"], axis=2))
            inits.append(const("idx", np.arange(H * W - 1, -1, -1, dtype=np.int64)))
        else:
            nodes.append(helper.make_node("Identity", ["r"], ["f"]))
        return model(nodes + [helper.make_node("Reshape", ["f", "map"], ["mid"])], inits)

    def cumsum(kind: str):
        T = 32
        nodes = [helper.make_node("Reshape", ["c1", "runs"], ["r"])]
        inits = [const("runs", np.array([1, C, H * W // T, T], np.int64)), const("map", np.array([1, C, H, W], np.int64))]
        if kind == "op":
            nodes.append(helper.make_node("CumSum", ["r", "last"], ["f"]))
            inits.append(const("last", np.array(-1, np.int64)))
        else:  # f[..., i] = sum_j r[..., j] U[j, i], U[j, i] = 1 for j <= i
            nodes.append(helper.make_node("MatMul", ["r", "upper"], ["f"]))
            inits.append(const("upper", np.triu(np.ones((T, T), np.float32))))
        return model(nodes + [helper.make_node("Reshape", ["f", "map"], ["mid"])], inits)

    def softmax(kind: str):
        N = 64
        nodes = [helper.make_node("Reshape", ["c1", "rows"], ["r"])]
        inits = [const("rows", np.array([C * H * W // (N * N), N, N], np.int64)),
                 const("map", np.array([1, C, H, W], np.int64))]
        if kind == "op":
            nodes.append(helper.make_node("Softmax", ["r"], ["f"], axis=-1))
        else:
            inits.append(const("last", np.array([-1], np.int64)))
            nodes += [helper.make_node("ReduceMax", ["r", "last"], ["m"]), helper.make_node("Sub", ["r", "m"], ["d"]),
                      helper.make_node("Exp", ["d"], ["e"]), helper.make_node("ReduceSum", ["e", "last"], ["z"]),
                      helper.make_node("Div", ["e", "z"], ["f"])]
        return model(nodes + [helper.make_node("Reshape", ["f", "map"], ["mid"])], inits)

    return {"ln_cl": ln_cl(), "ln_div": ln_axis1(True), "ln_recip": ln_axis1(False),
            "flip_slice": flip("slice"), "flip_gather": flip("gather"), "flip_none": flip("none"),
            "cumsum_op": cumsum("op"), "cumsum_matmul": cumsum("matmul"),
            "softmax_op": softmax("op"), "softmax_exp": softmax("exp")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    import onnxruntime as ort
    import openvino as ov

    core = ov.Core()
    x = np.random.default_rng(1).standard_normal((1, C, H, W)).astype(np.float32)
    runners, layers, diffs = {}, {}, {}
    for name, m in graphs().items():
        blob = m.SerializeToString()
        compiled = core.compile_model(core.read_model(blob, b""), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "1"})
        layers[name] = dict(collections.Counter(op.get_rt_info()["layerType"].astype(str)
                                                for op in compiled.get_runtime_model().get_ordered_ops()))
        request = compiled.create_infer_request()
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
        diffs[name] = float(np.abs(request.infer({0: x})[0] - sess.run(None, {"x": x})[0]).max())
        runners[name] = {"openvino": lambda r=request: r.infer({0: x}), "ort": lambda s=sess: s.run(None, {"x": x})}
    times = collections.defaultdict(list)
    keys = [(n, e) for n in runners for e in ("openvino", "ort")]
    for r in range(args.runs):
        for k in range(len(keys)):  # each round starts with the next graph
            name, engine = keys[(r + k) % len(keys)]
            start = time.perf_counter()
            runners[name][engine]()
            times[name, engine].append((time.perf_counter() - start) * 1e3)
    rows = []
    for name in runners:
        row = {"graph": name, "openvino_ms": float(np.percentile(times[name, "openvino"], 10)),
               "ort_ms": float(np.percentile(times[name, "ort"], 10)), "max_abs_diff": diffs[name],
               "openvino_layers": {k: v for k, v in layers[name].items() if k not in ("Const", "Input", "Output")}}
        rows.append(row)
        print(f"{name:12s} openvino {row['openvino_ms']:7.3f} ms  ort {row['ort_ms']:7.3f} ms  {row['openvino_layers']}")
    if not args.no_save:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results import save

        save("ov_formulations", rows, params={"runs": args.runs, "threads": 1})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
