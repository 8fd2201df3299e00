"""``fp16-ref``: run an FP16/BF16 ONNX graph on the CPU with every op's output rounded to its
declared type, so FP16 overflow and rounding show up without a GPU.

ONNX Runtime's CPU provider has few float16 kernels: it inserts casts and computes in FP32, so it
never shows an FP16 overflow. :class:`HalfReference` runs the graph with
``onnx.reference.ReferenceEvaluator`` (NumPy kernels, float16 arrays stay float16) and, after
every node, casts each output to the element type the graph declares for it (float16 / bfloat16),
counting the outputs a kernel had computed wider. The FP32 islands compute in FP32, exactly as
the graph's Cast nodes say, which is what TensorRT builds from the same file.

It is slow (pure NumPy): use small tiles (32-64 pixels).
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

_NP = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}


def _declared_types(model: onnx.ModelProto) -> dict[str, object]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    out: dict[str, object] = {}
    for vi in list(g.value_info) + list(g.output):
        t = vi.type.tensor_type.elem_type
        if t in _NP:
            out[vi.name] = _NP[t]
        elif t == TensorProto.BFLOAT16:
            from onnx.reference.custom_element_types import bfloat16

            out[vi.name] = bfloat16
    return out


class HalfReference:
    """``run({name: array}) -> [outputs]`` with per-op rounding to the declared types."""

    def __init__(self, model: str | os.PathLike | onnx.ModelProto) -> None:
        from onnx.reference import ReferenceEvaluator

        proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        self.model = proto
        self.types = _declared_types(proto)
        self.rounded = 0  # outputs a kernel computed wider than declared, rounded here
        self.evaluator = ReferenceEvaluator(proto)
        for node in self.evaluator.rt_nodes_:
            node.run = self._wrap(node.run, list(node.onnx_node.output))

    def _wrap(self, run, names: list[str]):
        def rounded_run(*args, **kwargs):
            outputs = run(*args, **kwargs)
            fixed = []
            for name, value in zip(names, outputs):
                want = self.types.get(name)
                if want is not None and isinstance(value, np.ndarray) and value.dtype != np.dtype(want):
                    if value.dtype.kind == "f" and np.dtype(want).itemsize < value.dtype.itemsize:
                        self.rounded += 1
                    value = value.astype(want)
                fixed.append(value)
            return tuple(fixed) + tuple(outputs[len(fixed):])

        return rounded_run

    @property
    def input_names(self) -> list[str]:
        """The graph's input names."""
        return [i.name for i in self.model.graph.input]

    @property
    def input_dtype(self):
        """The numpy dtype of the graph's first input."""
        t = self.model.graph.input[0].type.tensor_type.elem_type
        return _NP.get(t, np.float32)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Evaluate the graph on ``feeds`` (cast to the input dtype); the outputs in order."""
        feeds = {k: np.asarray(v).astype(self.input_dtype) for k, v in feeds.items()}
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self.evaluator.run(None, feeds)


def reference_runner_cls():
    """A Polygraphy runner around :class:`HalfReference` (``hrx verify --backends fp16-ref``)."""
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class HalfReferenceRunner(BaseRunner):
        def __init__(self, path: str | os.PathLike, name: str = "fp16-ref") -> None:
            super().__init__(name=name, prefix="fp16-ref-runner")
            self._path = Path(path)

        def activate_impl(self) -> None:
            self.ref = HalfReference(self._path)

        def get_input_metadata_impl(self):
            meta = TensorMetadata()
            for vi in self.ref.model.graph.input:
                dims = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
                meta.add(vi.name, self.ref.input_dtype, dims)
            return meta

        def infer_impl(self, feed_dict):
            start = time.perf_counter()
            outs = self.ref.run(dict(feed_dict))
            self.inference_time = time.perf_counter() - start
            names = [o.name for o in self.ref.model.graph.output]
            return OrderedDict((n, np.asarray(o).astype(np.float32)) for n, o in zip(names, outs))

        def deactivate_impl(self) -> None:
            del self.ref

    return HalfReferenceRunner
