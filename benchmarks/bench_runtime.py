"""Runtime benchmark (a script, not a test): prints, measured in one process on the same tiles with the
same thread count (default: every core this process may use),

1. peers, interleaved pass by pass so machine load hits all alike: PyTorch eager (the training-side
   model), PyTorch on the fused model, ``torch.compile`` (inductor, CPU) of the fused model (compile time
   reported apart), ONNX Runtime FP32 and INT8 (``hrx calibrate --target cpu``) each in single-session
   mode (one session, all threads) and throughput mode (k sessions with 1 thread each, working on
   different tiles); ms per tile, MP/s of output and the ratio to eager. Targets: ORT FP32 >= 2.5x eager
   and ahead of torch.compile; INT8 >= 1.5x FP32;
2. where ONNX Runtime spends its time (its profiler): share per op type, and the data-movement share
   (Transpose, Reorder*, Expand, Where, Split, Concat; target < 25%);
3. the tiling overhead: whole-image throughput at the model's default overlap vs non-overlapping tiles;
4. tiled vs whole-image quality on a real photo (skimage astronaut): PSNR of the tiled ONNX Runtime result
   against whole-image PyTorch inference of the same model, for ``blend`` and ``crop``, and a seam score
   (mean jump of the error across tile boundaries / mean jump elsewhere; 1.0 = no seam).

The model is ``--checkpoint`` (default: the bundled ``default-x2``, trained); with ``--arch`` instead, a
preset with random weights perturbed by ``--perturb`` (speed does not depend on the weights). Usage::

    python benchmarks/bench_runtime.py                       # default-x2 (hrx-s x2), tile 128, all cores
    python benchmarks/bench_runtime.py --arch hrx-t --tiles 8 --repeats 2 --skip-quality --no-compile --no-int8
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import hrx
from hrx import metrics
from hrx.runtime.onnxrt import OnnxRuntimeBackend
from hrx.runtime.tiling import TileSpec, axis_windows, plan_axis, tile_count, upscale_tiled


def photo() -> np.ndarray:
    """skimage's astronaut, float32 ``[3, 512, 512]`` in [0, 1]."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut().transpose(2, 0, 1), dtype=np.float32) / 255.0


def photo_tiles(img: np.ndarray, tile: int, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    _, h, w = img.shape
    out = []
    for _ in range(count):
        y, x = rng.integers(0, h - tile + 1), rng.integers(0, w - tile + 1)
        out.append(np.ascontiguousarray(img[None, :, y:y + tile, x:x + tile]))
    return out


def perturb(model: torch.nn.Module, std: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def seconds_per_pass(fn, tiles: list[np.ndarray]) -> float:
    t0 = time.perf_counter()
    for t in tiles:
        fn(t)
    return time.perf_counter() - t0


def torch_runner(model: torch.nn.Module):
    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()
    return run


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return metrics.psnr(np.clip(a, 0, 1), np.clip(b, 0, 1))


def seam_score(tiled: np.ndarray, whole: np.ndarray, spec: TileSpec, height: int, width: int) -> float:
    """Mean |jump| of the error (tiled - whole) across tile boundaries over its mean elsewhere, both axes."""
    err = (tiled - whole).mean(0)
    crop = TileSpec(spec.tile, spec.overlap, spec.scale, spec.size_multiple, 1, "crop")
    scores = []
    for axis, length in ((1, width), (0, height)):
        bounds = sorted({lo for lo, _, _ in axis_windows(plan_axis(length, crop), crop) if lo > 0})
        jumps = np.abs(np.diff(err, axis=axis))
        jumps = jumps if axis == 1 else jumps.T
        at = [b - 1 for b in bounds]
        mask = np.ones(jumps.shape[1], bool)
        mask[at] = False
        if at:
            scores.append(jumps[:, at].mean() / jumps[:, mask].mean())
    return float(np.mean(scores)) if scores else 1.0


DATA_MOVEMENT = ("Transpose", "ReorderInput", "ReorderOutput", "Expand", "Where", "Split", "Concat")


def ort_session(path: Path, threads: int, profile: str | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if profile:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def session_runner(path: Path, threads: int):
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def throughput_runner(path: Path, workers: int):
    """``workers`` sessions with 1 thread each; a pass hands the tiles out round-robin, one Python
    thread per session (ONNX Runtime releases the GIL while it computes)."""
    from concurrent.futures import ThreadPoolExecutor

    runs = [session_runner(path, 1) for _ in range(workers)]
    pool = ThreadPoolExecutor(workers)

    def run_all(tiles: list[np.ndarray]) -> None:
        list(pool.map(lambda k: [runs[k](t) for t in tiles[k::workers]], range(workers)))
    return run_all


def op_profile(path: Path, tiles: list[np.ndarray], threads: int) -> tuple[float, list[tuple[str, float, int]]]:
    """(data-movement share, [(op type, share, nodes run per tile)]) of ONNX Runtime's kernel time."""
    import json
    from collections import Counter

    with tempfile.TemporaryDirectory() as tmp:
        sess = ort_session(path, threads, profile=str(Path(tmp) / "ort"))
        name = sess.get_inputs()[0].name
        for t in tiles:
            sess.run(None, {name: t})
        trace = Path(sess.end_profiling())
        events = json.loads(trace.read_text())
    dur: Counter = Counter()
    count: Counter = Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            dur[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    total = sum(dur.values()) or 1
    moving = sum(v for k, v in dur.items() if k in DATA_MOVEMENT) / total
    return moving, [(k, v / total, count[k] // len(tiles)) for k, v in dur.most_common()]


def calibrate_int8(fp32: Path, out: Path, threads: int) -> str:
    """``hrx calibrate --target cpu`` on scikit-image's photos; returns the quality gate's line."""
    import shutil

    from hrx.calibration.pipeline import CalibrateOptions, calibrate
    from hrx.data import skimage_photos

    photos = out.parent / "photos"
    photos.mkdir(exist_ok=True)
    for r in skimage_photos():
        shutil.copy(r.path, photos / f"{r.name}{r.path.suffix}")
    report = calibrate(CalibrateOptions(model=fp32, output=out, target="cpu", images=photos, samples=16, eval_tiles=8,
                                        max_drop=0.3, force=True, threads=threads))
    q = report.chosen.quality
    return (f"INT8 quality gate (held-back tiles): PSNR-Y FP32 {q.psnr_fp32:.3f} dB, INT8 {q.psnr_int8:.3f} dB, "
            f"drop {q.drop:+.3f} dB")


def main() -> None:
    from hrx.runtime.pool import available_cores

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default="default-x2", help="checkpoint or bundled name (default: default-x2)")
    ap.add_argument("--arch", default=None, help="instead of --checkpoint: this preset with perturbed random weights")
    ap.add_argument("--scale", type=int, default=2, help="with --arch")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--tiles", type=int, default=8, help="tiles per timed pass")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per runtime (median and range reported)")
    ap.add_argument("--threads", type=int, default=0, help="threads for every runtime (default: all cores)")
    ap.add_argument("--perturb", type=float, default=0.02, help="std of the random weight perturbation (--arch)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--onnx", type=Path, default=None,
                    help="export to this path and keep it; if it exists, reuse it (same model and --tile)")
    ap.add_argument("--int8", type=Path, default=None,
                    help="INT8 file from hrx calibrate --target cpu; if it does not exist, calibrate into it")
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (minutes of compiling)")
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()

    from hrx.export import export_onnx

    threads = args.threads or available_cores()
    torch.manual_seed(args.seed)
    torch.set_num_threads(threads)
    if args.arch:
        model = hrx.create_model(args.arch, scale=args.scale).eval()
        perturb(model, args.perturb, args.seed)
        label = f"{args.arch} x{args.scale} (perturbed random weights)"
    else:
        from hrx.checkpoint import resolve_checkpoint

        model = hrx.load_model(resolve_checkpoint(args.checkpoint)).eval()
        label = f"{args.checkpoint} ({getattr(model, 'arch', type(model).__name__)} x{model.scale})"
    fused = hrx.fuse(model)
    img = photo()
    print(f"# {label}, tile {args.tile}, batch 1, {threads} threads for every runtime, torch {torch.__version__}, "
          f"onnxruntime {__import__('onnxruntime').__version__}, {available_cores()} cores available")

    with tempfile.TemporaryDirectory() as tmp:
        path = args.onnx or Path(tmp) / "model.onnx"
        if not path.exists():
            t0 = time.perf_counter()
            result = export_onnx(model, path, tile=args.tile, batch=1)
            print(f"exported {path.name} in {time.perf_counter() - t0:.0f} s; graph passes: {result.passes}")
        ort = OnnxRuntimeBackend(path, "cpu", threads=threads)
        tiles = photo_tiles(img, args.tile, args.tiles, args.seed)
        int8 = None
        if not args.no_int8:
            int8 = args.int8 or Path(tmp) / "int8-cpu.onnx"
            if not int8.exists():
                t0 = time.perf_counter()
                print(calibrate_int8(path, int8, threads) + f" (calibrated in {time.perf_counter() - t0:.0f} s)")

        # 1. peers on the same tiles, interleaved pass by pass
        per_tile = {"pytorch eager (training model)": torch_runner(model), "pytorch fused": torch_runner(fused)}
        if not args.no_compile:
            import torch._inductor.config as inductor_config

            # compile in this process: a pool of compile subprocesses left alive beside the timed runs
            # made every runtime of the same run 1.5-4x slower on this 2-core machine
            inductor_config.compile_threads = 1
            compiled = torch.compile(fused, backend="inductor")
            t0 = time.perf_counter()
            torch_runner(compiled)(tiles[0])
            print(f"torch.compile (inductor) of the fused model: {time.perf_counter() - t0:.0f} s to compile (not timed below)")
            per_tile["torch.compile fused (inductor)"] = torch_runner(compiled)
        per_tile[f"onnxruntime fp32, 1 session x {threads} threads"] = session_runner(path, threads)
        if int8 is not None:
            per_tile[f"onnxruntime int8, 1 session x {threads} threads"] = session_runner(int8, threads)
        passes = {k: (lambda run: lambda ts: [run(t) for t in ts])(run) for k, run in per_tile.items()}
        if threads > 1:
            passes[f"onnxruntime fp32, {threads} sessions x 1 thread"] = throughput_runner(path, threads)
            if int8 is not None:
                passes[f"onnxruntime int8, {threads} sessions x 1 thread"] = throughput_runner(int8, threads)
        for run in per_tile.values():  # warm up
            run(tiles[0])
        times: dict[str, list[float]] = {k: [] for k in passes}
        for _ in range(args.repeats):
            for name, run in passes.items():
                t0 = time.perf_counter()
                run(tiles)
                times[name].append(time.perf_counter() - t0)
        eager = statistics.median(times["pytorch eager (training model)"])
        mp_out = args.tiles * (args.tile * model.scale) ** 2 / 1e6
        print(f"\n## runtimes: {args.tiles} tiles of {args.tile}x{args.tile} from the photo, {threads} threads each, "
              f"median (range) of {args.repeats} interleaved passes\n")
        print("| runtime | ms / tile | MP/s out | vs eager |")
        print("|---|---|---|---|")
        rows = []
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append({"runtime": name, "ms_per_tile": 1000 * med / args.tiles, "ms_min": 1000 * min(ts) / args.tiles,
                         "ms_max": 1000 * max(ts) / args.tiles, "mp_per_s_out": mp_out / med, "vs_eager": eager / med})
            print(f"| {name} | {1000 * med / args.tiles:.1f} ({1000 * min(ts) / args.tiles:.0f}-"
                  f"{1000 * max(ts) / args.tiles:.0f}) | {mp_out / med:.3f} | {eager / med:.2f}x |")
        eager_run = per_tile["pytorch eager (training model)"]
        err = max(float(np.abs(ort.infer(t) - eager_run(t)).max()) for t in tiles[:4])
        print(f"\nmax |onnxruntime fp32 - eager| on 4 tiles: {err:.2e}")
        params = {"model": label, "tile": args.tile, "tiles": args.tiles, "repeats": args.repeats, "threads": threads,
                  "max_abs_ort_fp32_vs_eager": err}
        if "torch.compile fused (inductor)" in per_tile:
            cerr = max(float(np.abs(per_tile["torch.compile fused (inductor)"](t) - per_tile["pytorch fused"](t)).max())
                       for t in tiles[:4])
            print(f"max |torch.compile - pytorch fused| on 4 tiles: {cerr:.2e}")
            params["max_abs_compile_vs_fused"] = cerr
        if int8 is not None:
            int8_run = session_runner(int8, threads)
            q = [psnr(int8_run(t), eager_run(t)) for t in tiles[:4]]
            print(f"PSNR of onnxruntime int8 against eager on 4 tiles: {min(q):.1f}-{max(q):.1f} dB")
            params["int8_vs_eager_psnr_min_db"] = min(q)
        from results import save

        save("runtime", rows, params=params)
        profile_rows = []

        # 2. where ONNX Runtime spends its time
        for name, file in (("fp32", path),) + ((("int8", int8),) if int8 is not None else ()):
            moving, ops = op_profile(file, tiles, threads)
            print(f"\n## onnxruntime {name} profile ({threads} threads, {len(tiles)} tiles): data movement "
                  f"({', '.join(DATA_MOVEMENT)}) {100 * moving:.1f}% of kernel time")
            print("| op type | share | nodes run per tile |")
            print("|---|---|---|")
            profile_rows.append({"graph": name, "op": "data movement (" + ", ".join(DATA_MOVEMENT) + ")",
                                 "share": moving, "nodes_per_tile": None})
            for op, share, n in ops[:14]:
                print(f"| {op} | {100 * share:.1f}% | {n} |")
                profile_rows.append({"graph": name, "op": op, "share": share, "nodes_per_tile": n})
        save("runtime_profile", profile_rows, params={"model": label, "tile": args.tile, "tiles": len(tiles),
                                                      "threads": threads})

        # 3. tiling overhead on the whole photo
        info = ort.info
        specs = {f"overlap {info.tile_overlap} (default)": TileSpec(info.tile, info.tile_overlap, info.scale,
                                                                   info.size_multiple, 1, "blend"),
                 "overlap 0": TileSpec(info.tile, 0, info.scale, info.size_multiple, 1, "blend")}
        print(f"\n## tiling overhead: {img.shape[2]}x{img.shape[1]} photo, onnxruntime cpu, median of {args.repeats}")
        rate = {}
        for name, spec in specs.items():
            ts = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                upscale_tiled(img, ort.infer, spec)
                ts.append(time.perf_counter() - t0)
            rate[name] = img.shape[1] * img.shape[2] / 1e6 / statistics.median(ts)
            print(f"{name:22s} stride {spec.stride:4d} {tile_count(*img.shape[1:], spec):3d} tiles "
                  f"{rate[name]:7.3f} MP/s in")
        first, second = rate.values()
        print(f"default overlap costs {100 * (1 - first / second):.0f}% of the non-overlapping throughput")
        save("runtime_tiling", [{"setting": k, "stride": spec.stride, "tiles": tile_count(*img.shape[1:], spec),
                                 "mp_per_s_in": rate[k]} for k, spec in specs.items()],
             params={"model": label, "photo": f"{img.shape[2]}x{img.shape[1]}", "repeats": args.repeats,
                     "threads": threads})

        # 4. tiled vs whole-image quality on the photo
        if not args.skip_quality:
            with torch.inference_mode():
                whole = model(torch.from_numpy(img)[None]).numpy()[0]
            print(f"\n## tiled (onnxruntime, tile {info.tile}) vs whole-image PyTorch eager, same model, {img.shape[2]}x{img.shape[1]} photo")
            quality_rows = []
            for overlap in (info.tile_overlap, 0):
                for merge in ("blend", "crop"):
                    spec = TileSpec(info.tile, overlap, info.scale, info.size_multiple, 1, merge)
                    tiled = upscale_tiled(img, ort.infer, spec)
                    print(f"overlap {overlap:3d} (stride {spec.stride:3d}) {merge:5s}  PSNR {psnr(tiled, whole):6.2f} dB  "
                          f"max |diff| {float(np.abs(tiled - whole).max()):.4f}  "
                          f"seam score {seam_score(tiled, whole, spec, *img.shape[1:]):.2f}")
                    quality_rows.append({"overlap": overlap, "stride": spec.stride, "merge": merge,
                                         "psnr_vs_whole_db": psnr(tiled, whole),
                                         "max_abs_diff": float(np.abs(tiled - whole).max()),
                                         "seam_score": seam_score(tiled, whole, spec, *img.shape[1:])})
            save("runtime_tiled_vs_whole", quality_rows, params={"model": label, "tile": info.tile,
                                                                 "photo": f"{img.shape[2]}x{img.shape[1]}"})
        ort.close()


if __name__ == "__main__":
    main()
