"""Shared helpers for the runtime tests (no tests here): a toy ONNX upscaler with HRX metadata, and the
checks every ONNX loader passes on bad files.

The toy is ``Conv3x3 -> ReLU -> Conv3x3 -> DepthToSpace`` (receptive radius 2 input pixels). Its weights
are nearest-neighbour upscaling plus a small random perturbation, so its output looks like the input
(useful for image checks) while every output pixel still depends on a 5x5 neighbourhood.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hrx.errors import HRXError
from hrx.interface import ModelInfo


def toy_weights(channels: int, scale: int, seed: int = 0, noise: float = 0.02) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    hidden = channels + 4
    w1 = rng.normal(0, 0.3, (hidden, channels, 3, 3)).astype(np.float32)
    w1[:channels] = 0
    for c in range(channels):
        w1[c, c, 1, 1] = 1.0  # identity on the first channels (inputs are >= 0, ReLU keeps them)
    b1 = rng.normal(0, 0.1, hidden).astype(np.float32)
    b1[:channels] = 0
    w2 = rng.normal(0, noise, (channels * scale * scale, hidden, 3, 3)).astype(np.float32)
    for c in range(channels):
        for k in range(scale * scale):  # DepthToSpace CRD: channel c * s * s + k -> colour c
            w2[c * scale * scale + k, c, 1, 1] += 1.0
    b2 = np.zeros(channels * scale * scale, np.float32)
    return w1, b1, w2, b2


def toy_model(channels: int = 3, scale: int = 2, tile: int | None = 16, batch: int = 1,
              size_multiple: int = 4, overlap: int = 8, seed: int = 0) -> onnx.ModelProto:
    """The toy as ONNX; ``tile=None``: dynamic input shape and no metadata (the whole-image reference)."""
    w1, b1, w2, b2 = toy_weights(channels, scale, seed)
    shape = ["N", channels, "H", "W"] if tile is None else [batch, channels, tile, tile]
    out_shape = ["N", channels, "Hs", "Ws"] if tile is None else [batch, channels, tile * scale, tile * scale]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["h1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("Conv", ["h2", "w2", "b2"], ["h3"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("DepthToSpace", ["h3"], ["output"], blocksize=scale, mode="CRD"),
    ]
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if tile is not None:
        info = ModelInfo(arch="toy", scale=scale, in_channels=channels, out_channels=channels, tile=tile, batch=batch,
                         size_multiple=size_multiple, tile_overlap=overlap, opset=17)
        for k, v in info.to_props().items():
            model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    return model


def write_toy(path: Path, **kwargs) -> Path:
    onnx.save(toy_model(**kwargs), str(path))
    return path


def toy_whole(x: np.ndarray, channels: int = 3, scale: int = 2, seed: int = 0) -> np.ndarray:
    """Whole-image inference of the toy: ``[N, C, H, W] -> [N, C, H*s, W*s]`` (dynamic-shape ONNX)."""
    import onnxruntime as ort

    model = toy_model(channels, scale, tile=None, seed=seed)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]


def assert_bad_files_refused(open_onnx: Callable[[Path], object], folder: Path, unreadable: str) -> None:
    """``open_onnx(path)`` refuses a missing file and a file of garbage, each with one line that names the
    file; ``unreadable`` is the reason it gives for the garbage."""
    with pytest.raises(HRXError, match="missing.onnx: no such ONNX file"):
        open_onnx(folder / "missing.onnx")
    (folder / "junk.onnx").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(HRXError, match=f"junk.onnx: {unreadable}") as e:
        open_onnx(folder / "junk.onnx")
    assert "\n" not in str(e.value)
