"""``hrx verify``: prove that deployed forms match the PyTorch training model, with Polygraphy.

Runners: a PyTorch runner (the *unfused* training model in eval mode; Polygraphy's own PytRunner
only runs on CUDA, so :class:`TorchRunner` is a CPU-capable one on Polygraphy's BaseRunner),
ONNX Runtime (CPU, and CUDA when its provider is present) and TensorRT (when installed).
Polygraphy's ``Comparator`` runs them on the same inputs (seeded random tiles, plus real image
tiles with ``--images``) and ``CompareFunc.simple`` gives the verdict; we add max abs / max rel
error and PSNR per backend.

``--bisect``: re-export the checkpoint with the file's own settings (:func:`export_settings`: tile, batch,
ops, precision, I/O type, simplifier, passes; exports are reproducible, so
the fresh graph has the same tensors), mark every node output of both graphs as an output, run both
on ONNX Runtime with graph optimisations off, and name the first node (in graph order) whose output
differs beyond tolerance, with the PyTorch module that produced it (metadata ``hrx_bisect_map``).
"""
from __future__ import annotations

import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np

from hrx.errors import HRXError
from hrx.export.onnx_tools import FLOAT_PRECISIONS, metadata
from hrx.metrics import psnr_from_mse
from hrx.paths import image_files
from hrx.interface import ModelInfo


# default (atol, rtol) by the model's compute precision: half-precision graphs differ from FP32 PyTorch
TOLERANCES = {"fp32": (1e-4, 1e-3), "fp16": (1e-2, 1e-2), "bf16": (6e-2, 6e-2)}


def default_tolerances(precision: str) -> tuple[float, float]:
    """(atol, rtol) for a model whose metadata says ``precision`` (Q/DQ models use FP32's)."""
    return TOLERANCES.get(precision, TOLERANCES["fp32"])


@dataclass
class BackendReport:
    backend: str
    max_abs: float
    max_rel: float
    psnr: float
    passed: bool
    output: str = "output"
    nan: int = 0  # NaN / Inf values in the backend's outputs: any fails it (the metrics are of the finite ones)
    inf: int = 0

    def line(self) -> str:
        """One line: backend, PASS / FAIL, the errors and PSNR."""
        verdict = "PASS" if self.passed else "FAIL"
        if self.nan or self.inf:
            finite = ("no finite value" if np.isnan(self.max_abs) else
                      f"where finite max_abs={self.max_abs:.3e}  PSNR={self.psnr:.2f} dB")
            return f"{self.backend:14s} {verdict}  NaN={self.nan}  Inf={self.inf}  ({finite}; output '{self.output}')"
        return (f"{self.backend:14s} {verdict}  max_abs={self.max_abs:.3e}  max_rel={self.max_rel:.3e}  "
                f"PSNR={self.psnr:.2f} dB  (output '{self.output}')")


@dataclass
class VerifySample:
    """One input tile and what PyTorch and each backend made of it (``hrx verify --html``)."""
    label: str
    input: np.ndarray  # float32 [C, t, t]
    reference: np.ndarray  # float32 [C, t*s, t*s]: the unfused PyTorch model
    outputs: dict[str, np.ndarray] = field(default_factory=dict)  # backend -> float32 [C, t*s, t*s]


@dataclass
class VerifyReport:
    model: Path
    reports: list[BackendReport] = field(default_factory=list)
    inputs: int = 0
    bisect: str | None = None
    atol: float = 0.0
    rtol: float = 0.0
    precision: str = "fp32"  # the model file's compute precision (its metadata)
    samples: list[VerifySample] = field(default_factory=list)  # with keep_outputs=True

    def limit(self, reference: np.ndarray) -> float:
        """The largest absolute difference that passes against ``reference``."""
        return self.atol + self.rtol * max(float(np.abs(reference).max()), 1.0)

    @property
    def passed(self) -> bool:
        """Whether every backend passed (and there was one)."""
        return bool(self.reports) and all(r.passed for r in self.reports)


def _torch_runner_cls():
    from polygraphy.backend.base import BaseRunner
    from polygraphy.common import TensorMetadata

    class TorchRunner(BaseRunner):
        """Runs an HRX torch model on the CPU (or CUDA) for Polygraphy's Comparator."""

        def __init__(self, model, info: ModelInfo, name: str = "pytorch") -> None:
            super().__init__(name=name, prefix="pytorch-runner")
            self._model, self._info = model, info

        def activate_impl(self) -> None:
            self.model = self._model.eval()

        def get_input_metadata_impl(self):
            i = self._info
            return TensorMetadata().add("input", np.float32, (i.batch, i.in_channels, i.tile, i.tile))

        def infer_impl(self, feed_dict):
            import torch

            with torch.no_grad():
                start = time.perf_counter()
                out = self.model(torch.from_numpy(np.ascontiguousarray(feed_dict["input"])))
                self.inference_time = time.perf_counter() - start
            return OrderedDict(output=out.float().numpy())

        def deactivate_impl(self) -> None:
            del self.model

    return TorchRunner


RunnerFactory = Callable[[Path, ModelInfo], list]  # (model path, its ModelInfo) -> Polygraphy runners


def ort_runners(path: Path, info: ModelInfo | None = None) -> list:
    """ONNX Runtime CPU, and CUDA when its provider is present."""
    import onnxruntime as ort
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    runners = [OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]), name="onnxrt-cpu")]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        runners.append(OnnxrtRunner(SessionFromOnnx(str(path), providers=["CUDAExecutionProvider"]), name="onnxrt-cuda"))
    return runners


def fp16_ref_runners(path: Path, info: ModelInfo | None = None) -> list:
    """The graph on the CPU with every op's output rounded to its FP16/BF16 type (:mod:`hrx.export.reference`)."""
    from hrx.export.reference import reference_runner_cls

    return [reference_runner_cls()(path)]


def image_tiles(folder: Path, info: ModelInfo, count: int, seed: int) -> list[np.ndarray]:
    """Random ``tile``-sized crops (reflect-padded when smaller) from the images in ``folder``."""
    return [tile for tile, _ in labelled_image_tiles(folder, info, count, seed)]


def labelled_image_tiles(folder: Path, info: ModelInfo, count: int, seed: int) -> list[tuple[np.ndarray, str]]:
    """:func:`image_tiles`, each with where it was cut from (``photo.png at (x, y)``)."""
    from PIL import Image, ImageOps

    files = image_files(folder)
    if not files:
        raise HRXError(f"{folder}: no images found (PNG, JPEG, WebP, BMP, TIFF)")
    rng = np.random.default_rng(seed)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[info.in_channels]
    tiles = []
    for k in range(count):
        path = files[k % len(files)]
        try:
            with Image.open(path) as im:
                arr = np.asarray(ImageOps.exif_transpose(im).convert(mode), dtype=np.float32) / 255.0
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds
            raise HRXError(f"{path}: cannot read image ({type(e).__name__})") from None
        arr = arr.reshape(arr.shape[0], arr.shape[1], -1).transpose(2, 0, 1)
        t = info.tile
        ph, pw = max(0, t - arr.shape[1]), max(0, t - arr.shape[2])
        if ph or pw:
            arr = np.pad(arr, ((0, 0), (0, ph), (0, pw)), mode="reflect" if min(arr.shape[1:]) > 1 else "edge")
        y = int(rng.integers(0, arr.shape[1] - t + 1))
        x = int(rng.integers(0, arr.shape[2] - t + 1))
        tiles.append((arr[:, y:y + t, x:x + t], f"{path.name} at ({x}, {y})"))
    return tiles


def make_inputs(info: ModelInfo, seed: int, random_count: int = 2, images: Path | None = None) -> list[dict]:
    return labelled_inputs(info, seed, random_count, images)[0]


def labelled_inputs(info: ModelInfo, seed: int, random_count: int = 2,
                    images: Path | None = None) -> tuple[list[dict], list[list[str]]]:
    """The feeds of :func:`make_inputs` and, per feed, what each of its batch items is (``random tile 1``,
    ``photo.png at (x, y)``)."""
    rng = np.random.default_rng(seed)
    shape = (info.batch, info.in_channels, info.tile, info.tile)
    feeds = [{"input": rng.random(shape, dtype=np.float32)} for _ in range(random_count)]
    labels = [[f"random tile {k * info.batch + j + 1}" for j in range(info.batch)] for k in range(random_count)]
    if images is not None:
        tiles = labelled_image_tiles(images, info, 2 * info.batch, seed)
        for i in range(0, len(tiles), info.batch):
            feeds.append({"input": np.stack([t for t, _ in tiles[i:i + info.batch]]).astype(np.float32)})
            labels.append([name for _, name in tiles[i:i + info.batch]])
    return feeds, labels


def _metrics(ref: np.ndarray, out: np.ndarray) -> tuple[float, float, float]:
    """``(max abs, max rel, PSNR)`` of ``out`` against ``ref``; NaN where either holds NaN (never 0 / inf)."""
    diff = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    max_abs = float(diff.max())
    max_rel = float((diff / np.maximum(np.abs(ref), 1e-6)).max())
    mse = float((diff**2).mean())
    return max_abs, max_rel, psnr_from_mse(mse)


def worst_metrics(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[tuple[float, float, float], int, int]:
    """The worst ``(max abs, max rel, PSNR)`` over ``(reference, output)`` pairs, taken where the output is
    finite, and the NaN and Inf counts of the outputs (a NaN compared directly would read as max_abs 0,
    PSNR inf: ``max(0.0, nan)`` is 0.0)."""
    worst, nan, inf, compared = (0.0, 0.0, float("inf")), 0, 0, False
    for ref, out in pairs:
        finite = np.isfinite(out)
        nan += int(np.count_nonzero(np.isnan(out)))
        inf += int(np.count_nonzero(~finite)) - int(np.count_nonzero(np.isnan(out)))
        if not finite.all():
            ref, out = ref[finite], out[finite]
        if out.size == 0:
            continue
        a, r, p = _metrics(ref, out)
        worst, compared = (max(worst[0], a), max(worst[1], r), min(worst[2], p)), True
    return (worst if compared else (float("nan"),) * 3), nan, inf


def verify(model_path: str | os.PathLike, checkpoint: str | os.PathLike, backends: Iterable[str] = ("onnxrt",),
           atol: float | None = None, rtol: float | None = None, images: Path | None = None, seed: int = 0,
           bisect: bool = False, runners: Mapping[str, RunnerFactory] | None = None,
           keep_outputs: bool = False) -> VerifyReport:
    """Compare the unfused PyTorch model with each backend in ``backends`` on the same inputs.
    ``runners`` maps backend names to runner factories: ``onnxrt`` and ``fp16-ref`` are built in; the
    layers above add theirs (``hrx verify`` adds ``trt`` from :func:`hrx.runtime.trt.polygraphy_runner`),
    so this module imports nothing from the runtime. ``atol``/``rtol`` default to :data:`TOLERANCES`
    for the model's precision (its metadata). ``keep_outputs``: the report keeps every input tile with the
    reference's and each backend's output (:attr:`VerifyReport.samples`, for ``hrx verify --html``)."""
    import hrx
    from polygraphy.comparator import Comparator, SimpleCompareFunc
    from polygraphy.logger import G_LOGGER

    model_path = Path(model_path)
    if not model_path.is_file():
        raise HRXError(f"{model_path}: no such model file")
    info = ModelInfo.from_onnx(model_path)
    d_atol, d_rtol = default_tolerances(info.precision)
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    torch_model = hrx.load_model(checkpoint)
    if (torch_model.scale, torch_model.in_channels) != (info.scale, info.in_channels):
        raise HRXError(f"{checkpoint}: checkpoint is x{torch_model.scale}/{torch_model.in_channels}ch but {model_path} "
                       f"is x{info.scale}/{info.in_channels}ch; pass the checkpoint it was exported from")
    factories = {"onnxrt": ort_runners, "fp16-ref": fp16_ref_runners, **(runners or {})}
    chosen = [_torch_runner_cls()(torch_model, info)]
    for b in backends:
        if b not in factories:
            raise HRXError(f"unknown backend {b!r}; choose from {', '.join(factories)}")
        chosen += factories[b](model_path, info)
    feeds, labels = labelled_inputs(info, seed, images=images)
    severity = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.CRITICAL  # our own report below says what failed
    try:
        results = Comparator.run(chosen, data_loader=feeds)
        accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(
            atol=atol, rtol=rtol, check_error_stat="elemwise"))
    finally:
        G_LOGGER.module_severity = severity
    report = VerifyReport(model=model_path, inputs=len(feeds), atol=atol, rtol=rtol, precision=info.precision)
    ref_name, ref_iters = results[0]
    if keep_outputs:
        report.samples = [VerifySample(label, feed["input"][j], ref_it["output"][j])
                          for feed, names, ref_it in zip(feeds, labels, ref_iters) for j, label in enumerate(names)]
    for (name, iters) in list(results)[1:]:
        worst, nan, inf = worst_metrics([(ref_it["output"], it["output"]) for ref_it, it in zip(ref_iters, iters)])
        passed = all(bool(iteration[out]) for result in accuracy for pair, iterations in result.items()
                     if name in pair for iteration in iterations for out in iteration)
        # our own tolerance check too, so the verdict never hinges on one library's default; NaN / Inf fail
        passed = passed and not (nan or inf) and \
            worst[0] <= atol + rtol * max(float(np.abs(ref_iters[0]["output"]).max()), 1.0)
        backend = name.split("-N")[0] if "-N" in name else name
        report.reports.append(BackendReport(backend, *worst, passed, nan=nan, inf=inf))
        if keep_outputs:
            outputs = (it["output"][j] for it in iters for j in range(len(it["output"])))
            for sample, out in zip(report.samples, outputs):
                sample.outputs[backend] = out
    if bisect and not report.passed:
        report.bisect = bisect_divergence(model_path, checkpoint, feeds[0]["input"], atol, rtol)
    return report


def _mark_all_outputs(proto) -> list[str]:
    """Make every node output a graph output (Polygraphy's MARK_ALL, done on the proto)."""
    existing = {o.name for o in proto.graph.output}
    names = []
    for node in proto.graph.node:
        for name in node.output:
            if name and name not in existing:
                proto.graph.output.add(name=name)
                existing.add(name)
            names.append(name)
    return names


def export_settings(info: ModelInfo) -> dict:
    """The :func:`~hrx.export.onnx_export.export_onnx` arguments that made the file ``info`` describes: tile,
    batch (or the dynamic axis), ops, opset, precision, I/O type, simplifier and graph passes (the metadata
    names the last two only when they were off) and the passes' target (``graph_target``; a file without
    it predates the choice and has the onnxruntime passes)."""
    extra = info.extra
    return dict(tile=info.tile, batch="dynamic" if extra.get("batch_axis") == "dynamic" else info.batch,
                ops=info.ops, opset=info.opset or 18,
                precision=info.precision if info.precision in FLOAT_PRECISIONS else "fp32",
                io=extra.get("io_precision", "fp32"), simplify_graph=extra.get("simplify", "true") != "false",
                graph_passes=extra.get("graph_passes", "true") != "false",
                target=extra.get("graph_target", "onnxruntime"))


def bisect_divergence(model_path: Path, checkpoint: str | os.PathLike, x: np.ndarray, atol: float, rtol: float) -> str:
    """Name the first node of ``model_path`` whose output differs from a fresh, verified export of
    ``checkpoint``. A fresh export of the same checkpoint and settings has the same graph (exports
    are reproducible), so every intermediate tensor has a trusted counterpart."""
    import tempfile

    import onnx
    import onnxruntime as ort

    from hrx.export.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        ref_path = Path(tmp) / "reference.onnx"
        export_onnx(checkpoint, ref_path, **export_settings(ModelInfo.from_onnx(model_path)))
        ref_proto, bad_proto = onnx.load(str(ref_path)), onnx.load(str(model_path))
    ref_nodes = {o: (n.op_type, n.name) for n in ref_proto.graph.node for o in n.output}
    bad_nodes = [(n, o) for n in bad_proto.graph.node for o in n.output]
    common = [o for n, o in bad_nodes if o in ref_nodes and ref_nodes[o][0] == n.op_type]
    if len(common) < 0.9 * len(bad_nodes):
        return (f"{model_path} does not have the graph this hrx exports for the checkpoint "
                f"({len(common)}/{len(bad_nodes)} tensors in common); re-export it to bisect")
    _mark_all_outputs(ref_proto)
    _mark_all_outputs(bad_proto)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    results = []
    for proto in (ref_proto, bad_proto):
        sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        results.append(dict(zip(names, sess.run(None, {"input": x}))))
    ref, bad = results
    scopes = {v: k for k, v in json.loads(metadata(bad_proto).get("hrx_bisect_map", "{}")).items()}
    for node, name in bad_nodes:
        if name not in ref or name not in bad or ref[name].shape != bad[name].shape or ref[name].dtype.kind != "f":
            continue
        r, b = ref[name].astype(np.float64), bad[name].astype(np.float64)
        with np.errstate(invalid="ignore"):  # equal infinities (masked scan entries) count as equal
            err = float(np.where(r == b, 0.0, np.abs(r - b)).max())
        if err > atol + rtol * max(float(np.abs(r).max()), 1.0):
            weights = [i for i in node.input if i in {t.name for t in bad_proto.graph.initializer}]
            where = f" in module '{scopes[name]}'" if name in scopes else ""
            uses = f", weights {', '.join(weights)}" if weights else ""
            return f"first divergence at node '{node.name}' ({node.op_type}{uses}){where}: max_abs={err:.3e}"
    return "no intermediate tensor diverges from a fresh export; the difference is in the PyTorch comparison itself"
