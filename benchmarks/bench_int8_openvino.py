"""INT8 on OpenVINO: which quantized file holds quality on unseen photos, one run (quality first, speed smoke).

    python benchmarks/bench_int8_openvino.py                               # default-x2 and Compact x4, tile 64
    python benchmarks/bench_int8_openvino.py --model default-x2 --samples 16 --method qdq-cpu --method nncf-onnx

Methods, all calibrated on the same bundled scikit-image photos (``--unseen`` ones excluded):

* ``qdq-cpu`` / ``qdq-trt``: ``hrx calibrate --target cpu`` / ``--target trt`` (ONNX Runtime's static
  quantizer, HRX's float plan; first rung of the ladder, no fallback), a Q/DQ ONNX file;
* ``nncf-onnx``: NNCF's post-training quantization of the FP32 ONNX file (its ONNX backend), a Q/DQ ONNX
  file, with HRX's float plan as NNCF's ignored scope; ``nncf-onnx-plain`` without it;
  ``nncf-onnx-convs`` with the float plan and every op type but Conv / Gemm ignored (only convolution
  inputs quantized, as HRX does) and mean-quantile activation ranges (``--nncf-ranges``);
  ``--nncf-preset`` picks NNCF's preset (performance: symmetric activations, mixed: asymmetric);
* ``nncf-ir``: NNCF on the OpenVINO model read from the same ONNX file (an in-memory IR);
* ``openvino``: ``hrx calibrate --target openvino`` (what the CLI ships).

Each file runs on OpenVINO's CPU plugin with the inference precision pinned (``--precision``: f32 keeps
whatever is not INT8 in FP32, bf16 is OpenVINO's default on CPUs with AVX512-BF16 / AMX). Quality: PSNR-Y
of FP32 and INT8 against the ground truth on ``tile * scale`` crops of the unseen photos (bicubic-downscaled
input, :mod:`hrx.calibration.quality`), the drop, and INT8 vs FP32. Speed: median ms per tile over
``--rounds`` interleaved rounds (a smoke figure on a busy machine; the measured comparison is
``benchmarks/bench_cpu_engines.py``). Models: the bundled ``default-x2`` (trained) and spandrel's
SRVGGNetCompact x4 at its published size with perturbed weights (``tests/zoo.py``).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

METHODS = ("qdq-cpu", "qdq-trt", "nncf-onnx", "nncf-onnx-plain", "nncf-onnx-convs", "nncf-ir", "openvino")
# what nncf-onnx-convs leaves float besides HRX's float plan: every op but Conv / Gemm
NNCF_FLOAT_TYPES = ("Add", "Mul", "Sub", "Div", "Resize", "PRelu", "MatMul", "Concat", "Sigmoid")
MODELS = ("default-x2", "compact-x4")
UNSEEN = ("astronaut", "camera", "retina", "gravel")


def zoo_module():
    import zoo  # tests/zoo.py

    return zoo


def export(name: str, tile: int, work: Path):
    """``(onnx path, ModelInfo)`` of the FP32 export."""
    from hrx.export.onnx_export import export_onnx

    out = work / f"{name}.onnx"
    source: object = name
    if name == "compact-x4":
        zoo = zoo_module()
        source = work / "compact-x4.pth"
        zoo.save(zoo.build("SRVGGNetCompact", 4, size="real"), source)
    return out, export_onnx(source, out, tile=tile).info


def unseen_pairs(names: tuple[str, ...], tile: int, scale: int, per_photo: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lr, hr)``: the most detailed of a few random ``tile * scale`` crops of each unseen photo."""
    from hrx.calibration.data import _detailed_crop, bicubic_down, load_rgb
    from hrx.data import skimage_photos

    paths = {r.name: Path(r.path) for r in skimage_photos()}
    rng = np.random.default_rng(seed)
    hr = np.stack([_detailed_crop(load_rgb(paths[n], 3), tile * scale, rng) for n in names if n in paths
                   for _ in range(per_photo)])
    return bicubic_down(hr, scale), hr


def calib_tiles(folder: Path, tile: int, samples: int, seed: int) -> np.ndarray:
    from hrx.calibration.data import sample_tiles

    return sample_tiles(folder, tile, 1, 3, samples, 1, seed).calib


def nncf_onnx(fp32: Path, out: Path, tiles: np.ndarray, ignore_plan: bool, convs_only: bool = False,
              preset: str = "performance", ranges: str | None = None) -> Path:
    """NNCF's ``quantize`` of the ONNX file; ``ranges`` None: NNCF's default activation ranges."""
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    from hrx.calibration.graph import float_plan

    model = onnx.load(str(fp32))
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"hrx_unnamed_{i}_{node.op_type}"
    name = model.graph.input[0].name
    names = sorted({n for nodes in float_plan(model).values() for n in nodes}) if ignore_plan else []
    types = list(NNCF_FLOAT_TYPES) if convs_only else []
    advanced = None
    if ranges is not None:
        estimator = {"minmax": RangeEstimatorParametersSet.MINMAX, "quantile": RangeEstimatorParametersSet.MEAN_QUANTILE}
        advanced = AdvancedQuantizationParameters(activations_range_estimator_params=estimator[ranges])
    q = nncf.quantize(model, nncf.Dataset([t[None] for t in tiles], lambda x: {name: x}),
                      preset=nncf.QuantizationPreset(preset), target_device=nncf.TargetDevice.CPU,
                      subset_size=len(tiles), ignored_scope=nncf.IgnoredScope(names=names, types=types, validate=False),
                      advanced_parameters=advanced)
    onnx.save(q, str(out))
    return out


def nncf_ir(fp32: Path, tiles: np.ndarray):
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32))
    return nncf.quantize(model, nncf.Dataset([t[None] for t in tiles]), preset=nncf.QuantizationPreset.PERFORMANCE,
                         target_device=nncf.TargetDevice.CPU, subset_size=len(tiles))


def compile_ov(model, precision: str, threads: int):
    import openvino as ov

    core = ov.Core()
    cfg = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        cfg["INFERENCE_NUM_THREADS"] = threads
    return core.compile_model(model if not isinstance(model, Path) else str(model), "CPU", cfg)


def int8_convs(compiled) -> str:
    """``"k/n"``: convolutions OpenVINO's CPU plugin runs on 8-bit inputs, of all convolutions."""
    k = n = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if rt["layerType"].astype(str) not in ("Convolution", "Deconvolution", "FullyConnected"):
            continue
        n += 1
        k += "8" in rt["runtimePrecision"].astype(str)
    return f"{k}/{n}"


def run(compiled, lr: np.ndarray) -> np.ndarray:
    request = compiled.create_infer_request()
    return np.concatenate([request.infer({0: lr[i:i + 1]})[0].copy() for i in range(len(lr))])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", choices=MODELS)
    ap.add_argument("--method", action="append", choices=METHODS)
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--samples", type=int, default=32, help="calibration tiles")
    ap.add_argument("--per-photo", type=int, default=4, help="evaluation crops per unseen photo")
    ap.add_argument("--precision", action="append", choices=("f32", "bf16"), help="OpenVINO inference precision "
                    "(repeatable; default: f32 and bf16)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--nncf-preset", choices=("performance", "mixed"), default="performance")
    ap.add_argument("--nncf-ranges", choices=("minmax", "quantile"), default="quantile",
                    help="activation ranges of nncf-onnx-convs (the others use NNCF's default, min/max)")
    ap.add_argument("--threads", type=int, default=0, help="OpenVINO threads (0: all cores)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import openvino as ov

    from hrx.calibration.pipeline import CalibrateOptions, calibrate
    from hrx.calibration.quality import compare
    from hrx.data import skimage_photos
    from results import header

    precisions = args.precision or ["f32", "bf16"]
    work = Path(tempfile.mkdtemp(prefix="hrx-int8-ov-"))
    photos = work / "photos"
    photos.mkdir()
    for rec in skimage_photos():
        if rec.name not in UNSEEN:
            shutil.copy(rec.path, photos / Path(rec.path).name)
    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}")
    print(f"openvino {ov.__version__}, calibration photos: {len(list(photos.iterdir()))} bundled, unseen: "
          f"{', '.join(UNSEEN)} ({args.per_photo} crops each), tile {args.tile}, {args.samples} calibration tiles\n")
    print(*header(["model", "method", "OpenVINO precision", "INT8 convs", "FP32 PSNR", "INT8 PSNR", "drop",
                   "INT8 vs FP32", "ms/tile (smoke)", "vs FP32 same precision"]), sep="\n")
    rows = []
    try:
        for name in args.model or MODELS:
            fp32, info = export(name, args.tile, work)
            lr, hr = unseen_pairs(UNSEEN, info.tile, info.scale, args.per_photo, args.seed)
            tiles = calib_tiles(photos, info.tile, args.samples, args.seed)
            files: dict[str, object] = {}
            for method in args.method or METHODS:
                t0 = time.perf_counter()
                try:
                    if method.startswith("qdq-") or method == "openvino":
                        out = work / f"{name}.{method}.onnx"
                        target = method[4:] if method.startswith("qdq-") else "openvino"
                        calibrate(CalibrateOptions(model=fp32, output=out, images=photos, target=target,
                                                   samples=args.samples, eval_tiles=8, force=True,
                                                   fallback=method == "openvino", seed=args.seed))
                        files[method] = out
                    elif method == "nncf-onnx-convs":
                        files[method] = nncf_onnx(fp32, work / f"{name}.{method}.onnx", tiles, True, True,
                                                  args.nncf_preset, args.nncf_ranges)
                    elif method.startswith("nncf-onnx"):
                        files[method] = nncf_onnx(fp32, work / f"{name}.{method}.onnx", tiles, method == "nncf-onnx",
                                                  preset=args.nncf_preset)
                    else:
                        files[method] = nncf_ir(fp32, tiles)
                except Exception as e:  # noqa: BLE001 - one line, the table goes on
                    print(f"| {name} | {method} | FAIL: {str(e).strip().splitlines()[0][:120]} |||||||", flush=True)
                    continue
                print(f"{name} {method}: quantized in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            for precision in precisions:
                compiled = {"fp32": compile_ov(fp32, precision, args.threads)}
                compiled.update({m: compile_ov(f, precision, args.threads) for m, f in files.items()})
                outs = {m: run(c, lr) for m, c in compiled.items()}
                times: dict[str, list[float]] = {m: [] for m in compiled}
                x = lr[:1]
                for _ in range(args.rounds):
                    for m, c in compiled.items():
                        request = c.create_infer_request()
                        request.infer({0: x})
                        t0 = time.perf_counter()
                        request.infer({0: x})
                        times[m].append(time.perf_counter() - t0)
                ms = {m: statistics.median(v) * 1e3 for m, v in times.items()}
                ref = outs["fp32"]
                for m, c in compiled.items():
                    q = compare(ref, outs[m], hr, info.scale)
                    vs = "ref" if m == "fp32" else f"{q.psnr_int8_vs_fp32:.1f} dB"
                    print(f"| {name} | {m} | {precision} | {int8_convs(c)} | {q.psnr_fp32:.3f} | {q.psnr_int8:.3f} | "
                          f"{q.drop:+.3f} | {vs} | {ms[m]:.1f} | {ms['fp32'] / ms[m]:.2f}x |", flush=True)
                    rows.append({"model": name, "method": m, "precision": precision, "int8_convs": int8_convs(c),
                                 "psnr_fp32": q.psnr_fp32, "psnr_int8": q.psnr_int8, "drop_db": q.drop,
                                 "int8_vs_fp32_db": None if m == "fp32" else q.psnr_int8_vs_fp32,
                                 "ms_per_tile_smoke": ms[m], "vs_fp32_same_precision": ms["fp32"] / ms[m]})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from results import save

    save("int8_openvino", rows, params={"tile": args.tile, "samples": args.samples, "per_photo": args.per_photo,
                                        "threads": args.threads, "rounds": args.rounds, "seed": args.seed,
                                        "unseen": ",".join(UNSEEN)})


if __name__ == "__main__":
    main()
