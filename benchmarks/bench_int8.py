"""INT8 (hrx calibrate) vs FP32 on ONNX Runtime CPU: throughput ratio and PSNR drop, in one run,
for both Q/DQ formats (``--target cpu``: U8S8, ``--target trt``: S8S8 symmetric).

    python benchmarks/bench_int8.py                          # bundled default-x2, tile 256
    python benchmarks/bench_int8.py out/my.safetensors --tile 128 --threads 2
    python benchmarks/bench_int8.py default-x2 --ops plugin

Steps: export the checkpoint (FP32 ONNX, static tile); ``hrx calibrate`` it once with ``--target trt``
on a folder of photos (default: scikit-image's bundled photos; the gate's tiles come from held-back
images, never from the calibration crops), then again with ``--target cpu`` from the cached ranges;
time FP32 and both INT8 files with interleaved runs on the same input (median of ``--repeats``); profile
the FP32 model to report the share of its time spent in Conv / Gemm, the only ops INT8 speeds up here
(Amdahl: the whole model can get at most ``1 / (1 - share)`` faster even if they became free).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

QUANTIZABLE_KERNELS = ("Conv", "FusedConv", "Gemm", "FusedGemm", "QLinearConv", "QGemm")


def default_images(folder: Path) -> Path:
    """scikit-image's bundled photos, copied into ``folder``."""
    from hrx.data import skimage_photos

    folder.mkdir(parents=True, exist_ok=True)
    for r in skimage_photos():
        shutil.copy(r.path, folder / f"{r.name}{r.path.suffix}")
    return folder


def time_models(paths: dict[str, Path], x: np.ndarray, threads: int, repeats: int) -> dict[str, float]:
    """Median ms per run of each model, runs interleaved so background load hits all alike."""
    from hrx.runtime.onnxrt import CPU, create_session

    sessions = {k: create_session(p, [CPU], threads=threads) for k, p in paths.items()}
    for s in sessions.values():
        for _ in range(2):
            s.run(None, {"input": x})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(repeats):
        for k, s in sessions.items():
            start = time.perf_counter()
            s.run(None, {"input": x})
            times[k].append(time.perf_counter() - start)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def kernel_share(path: Path, x: np.ndarray, threads: int, runs: int = 3) -> tuple[float, list[tuple[str, float]]]:
    """(share of ONNX Runtime kernel time in Conv / Gemm kernels, top op types with their shares)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / "hrx-bench-int8")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, {"input": x})
    trace = Path(session.end_profiling())
    per_op: Counter = Counter()
    for e in json.loads(trace.read_text()):
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    trace.unlink(missing_ok=True)
    total = sum(per_op.values()) or 1
    share = sum(v for k, v in per_op.items() if k in QUANTIZABLE_KERNELS) / total
    return share, [(k, v / total) for k, v in per_op.most_common(6)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?", default="default-x2", help="checkpoint or bundled name (default: default-x2)")
    ap.add_argument("--images", type=Path, help="calibration folder (default: scikit-image's bundled photos)")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--ops", choices=("native", "plugin"), default="native")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--eval-tiles", type=int, default=16)
    ap.add_argument("--method", default="percentile", choices=("percentile", "entropy", "minmax"))
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for the timing")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--keep", type=Path, help="copy the FP32 and INT8 files here")
    args = ap.parse_args(argv)

    from hrx.calibration.pipeline import CalibrateOptions, calibrate
    from hrx.export.onnx_export import export_onnx

    print("command: python benchmarks/bench_int8.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    with tempfile.TemporaryDirectory(prefix="hrx-bench-int8-") as tmp_str:
        tmp = Path(tmp_str)
        images = args.images or default_images(tmp / "photos")
        fp32 = export_onnx(args.checkpoint, tmp / "fp32.onnx", tile=args.tile, ops=args.ops).path
        reports, seconds = {}, {}
        for target in ("trt", "cpu"):
            opts = CalibrateOptions(model=fp32, output=tmp / f"int8-{target}.onnx", target=target,
                                    method=args.method, samples=args.samples, eval_tiles=args.eval_tiles, max_drop=0.3,
                                    force=True, threads=args.threads)
            if target == "trt":
                opts.images = images
            else:  # same ranges, no images: what re-quantizing from the cache does
                opts.ranges = tmp / "int8-trt.ranges.json"
            start = time.perf_counter()
            reports[target] = calibrate(opts)
            seconds[target] = time.perf_counter() - start
        info = reports["trt"].info
        x = np.ascontiguousarray(reports["trt"].cache.eval_lr[:info.batch])
        if len(x) < info.batch:
            x = np.concatenate([x] * info.batch)[:info.batch]
        ms = time_models({"fp32": fp32, "cpu": tmp / "int8-cpu.onnx", "trt": tmp / "int8-trt.onnx"}, x,
                         args.threads, args.repeats)
        share, top = kernel_share(fp32, x, args.threads)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for name in ("fp32.onnx", "int8-cpu.onnx", "int8-trt.onnx"):
                shutil.copy(tmp / name, args.keep / name)

    c = reports["trt"].cache
    print(f"model: {args.checkpoint} ({info.arch} x{info.scale}), ONNX ops={args.ops}, tile {args.tile}, batch {info.batch}; "
          f"ONNX Runtime CPU, {args.threads} thread(s), median of {args.repeats} interleaved runs")
    print(f"calibration: {args.method} on {c.key.samples} crops of {len(c.calib_images)} images; "
          f"gate on {c.eval_hr.shape[0]} tiles of held-back images: {', '.join(c.held_back_images)}")
    print()
    print("| format | quantized / kept float | PSNR-Y FP32 | PSNR-Y INT8 | drop | INT8 vs FP32 | ms / tile | speed vs FP32 |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| FP32 | - | {reports['trt'].chosen.quality.psnr_fp32:.3f} dB | - | - | - | {ms['fp32']:.1f} | 1.00x |")
    rows = [{"format": "FP32", "psnr_y_fp32": reports["trt"].chosen.quality.psnr_fp32, "ms_per_tile": ms["fp32"],
             "speed_vs_fp32": 1.0}]
    for target, name in (("cpu", "INT8 --target cpu (U8S8)"), ("trt", "INT8 --target trt (S8S8 sym)")):
        a = reports[target].chosen
        q = a.quality
        kept = sum(len(v) for v in a.quant.kept.values())
        print(f"| {name} | {len(a.quant.quantized)} / {kept} (fallback {a.quant.step.name}) | {q.psnr_fp32:.3f} dB | "
              f"{q.psnr_int8:.3f} dB | {q.drop:+.3f} dB | {q.psnr_int8_vs_fp32:.2f} dB | {ms[target]:.1f} | "
              f"{ms['fp32'] / ms[target]:.2f}x |")
        rows.append({"format": name, "quantized": len(a.quant.quantized), "kept_float": kept, "fallback": a.quant.step.name,
                     "psnr_y_fp32": q.psnr_fp32, "psnr_y_int8": q.psnr_int8, "drop_db": q.drop,
                     "int8_vs_fp32_db": q.psnr_int8_vs_fp32, "ms_per_tile": ms[target],
                     "speed_vs_fp32": ms["fp32"] / ms[target]})
    print()
    print(f"FP32 kernel time in Conv/Gemm: {share * 100:.1f}% -> INT8 of those ops can make the model at most "
          f"{1 / max(1e-9, 1 - share):.2f}x faster on ONNX Runtime CPU")
    print("FP32 kernel time by op: " + ", ".join(f"{k} {v * 100:.1f}%" for k, v in top))
    print(f"calibrate wall time: trt {seconds['trt']:.1f} s (with range collection), "
          f"cpu {seconds['cpu']:.1f} s (cached ranges)")
    from results import save

    save("int8", rows, params={"checkpoint": args.checkpoint, "tile": args.tile, "ops": args.ops, "batch": info.batch,
                               "threads": args.threads, "repeats": args.repeats, "method": args.method,
                               "samples": args.samples, "conv_gemm_share_fp32": share,
                               "ceiling_if_conv_gemm_free": 1 / max(1e-9, 1 - share)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
