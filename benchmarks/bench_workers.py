"""CPU throughput modes of ``hrx upscale`` in one process, interleaved: one ONNX Runtime session with every
core, one single-thread session per core sharing tiles (the default), and the same sessions sharing only
images (the former pool), on a folder of small photos and on one large photo.

    python benchmarks/bench_workers.py                 # bundled default-x2, tile 128, 2 threads
    python benchmarks/bench_workers.py --engine m.onnx --threads 4 --repeats 5

Prints seconds per run (median of ``--repeats``), the speed against one session, the batches each shared
session ran, and the process's CPU seconds per wall second (how many cores the load left it).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def photos(root: Path) -> tuple[Path, Path]:
    from PIL import Image

    from hrx.data import skimage_photos

    folder, big = root / "folder", root / "big"
    folder.mkdir()
    big.mkdir()
    found = {r.name: r.path for r in skimage_photos()}
    for name in sorted(found)[:6]:
        with Image.open(found[name]) as im:
            im.convert("RGB").crop((0, 0, 200, 200)).save(folder / f"{name}.png")
    with Image.open(found["astronaut"]) as im:
        im.convert("RGB").resize((640, 480)).save(big / "big.png")
    return folder, big


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", type=Path, help="FP32 ONNX export (default: default-x2 exported at --tile)")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="cores to use (default: all)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    from hrx.runtime.onnxrt import OnnxRuntimeBackend
    from hrx.runtime.pipeline import plan_jobs
    from hrx.runtime.pool import Worker, available_cores, run_pool
    from hrx.runtime.tiling import TileSpec

    cores = args.threads or available_cores()
    with tempfile.TemporaryDirectory(prefix="hrx-workers-") as tmp:
        root = Path(tmp)
        engine = args.engine
        if engine is None:
            from hrx.checkpoint import resolve_checkpoint
            from hrx.export.onnx_export import export_onnx

            engine = root / "model.onnx"
            export_onnx(resolve_checkpoint("default-x2"), engine, tile=args.tile)
        folder, big = photos(root)
        one = [OnnxRuntimeBackend(engine, "cpu", cores)]
        many = [OnnxRuntimeBackend(engine, "cpu", 1) for _ in range(cores)]
        calls = np.zeros(cores, int)
        for k, b in enumerate(many):
            infer = b.infer

            def counted(x, infer=infer, k=k):
                calls[k] += 1
                return infer(x)
            b.infer = counted
        single = [Worker("cpu", 0, cores)]
        workers = [Worker("cpu", k, 1) for k in range(cores)]
        modes = {f"1 session x {cores} threads": (one, single, True),
                 f"{cores} x 1 thread, tiles shared (default)": (many, workers, True),
                 f"{cores} x 1 thread, images shared only": (many, workers, False)}

        def spec(b):
            i = b.info
            return TileSpec(i.tile, i.tile_overlap, i.scale, i.size_multiple, i.batch, "blend")

        print(f"# {engine.name}, {cores} cores, median of {args.repeats} interleaved runs, load average "
              f"{os.getloadavg()[0]:.1f}")
        rows = []
        for name, src in (("6 photos 200x200", folder), ("one photo 640x480", big)):
            times: dict[str, list[float]] = {m: [] for m in modes}
            cpu: dict[str, list[float]] = {m: [] for m in modes}
            shared_calls = None
            for _ in range(args.repeats):
                for mode, (backends, ws, share) in modes.items():
                    out = root / "out"
                    shutil.rmtree(out, ignore_errors=True)
                    calls[:] = 0
                    c0, t0 = os.times(), time.perf_counter()
                    run_pool(backends, ws, plan_jobs([src], out), spec, share_tiles=share)
                    wall, c1 = time.perf_counter() - t0, os.times()
                    times[mode].append(wall)
                    cpu[mode].append((c1.user + c1.system - c0.user - c0.system) / wall)
                    if "default" in mode:
                        shared_calls = calls.tolist()
            base = statistics.median(times[next(iter(modes))])
            print(f"\n## {name}\n| mode | s (median) | speed vs one session | CPU-s per s |\n|---|---|---|---|")
            for mode, ts in times.items():
                med = statistics.median(ts)
                print(f"| {mode} | {med:.2f} | {base / med:.2f}x | {statistics.median(cpu[mode]):.2f} |")
                rows.append({"input": name, "mode": mode, "seconds": med, "speed_vs_one_session": base / med,
                             "cpu_s_per_s": statistics.median(cpu[mode])})
            print(f"batches per shared session (last run): {shared_calls}")
    from results import save

    save("workers", rows, params={"engine": engine.name, "tile": args.tile, "threads": cores, "repeats": args.repeats,
                                  "load_average": os.getloadavg()[0]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
