"""Several ONNX files (or one file with different session settings) on ONNX Runtime CPU, interleaved on
the same photo tiles: ms per tile and speed relative to the first, in one run.

    python benchmarks/bench_ort_compare.py fp32.onnx old.int8.onnx new.int8.onnx --threads 2 --rounds 11
    python benchmarks/bench_ort_compare.py m.int8.onnx m.int8.onnx,-NhwcTransformer \\
        m.int8.onnx,session.enable_quant_qdq_cleanup=1

A spec is ``PATH[,KEY=VALUE|,-OPTIMIZER]...``: session config entries and graph optimizers to disable.
Each round runs every spec once over the tiles (round robin, starting with the next spec each round), so
machine load and the place in the round hit them alike; the median
and the fastest round of each are reported (on a shared machine the fastest rounds are the least disturbed).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def session_runner(spec: str, threads: int):
    import onnxruntime as ort

    path, *settings = spec.split(",")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    disabled = []
    for item in settings:
        if item.startswith("-"):
            disabled.append(item[1:])
        else:
            key, value = item.split("=", 1)
            opts.add_session_config_entry(key, value)
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"], disabled_optimizers=disabled or None)
    name = sess.get_inputs()[0].name
    return sess, lambda x: sess.run(None, {name: x})[0]


def interleaved(runs: list, tiles: list[np.ndarray], rounds: int) -> list[list[float]]:
    """ms per tile of each of ``runs`` (callables on one tile) in every round: each round runs them all over
    ``tiles``, starting with the next one each round, so no place in the round is favoured."""
    times: list[list[float]] = [[] for _ in runs]
    for r in range(rounds):
        for k in [(r + j) % len(runs) for j in range(len(runs))]:
            t0 = time.perf_counter()
            for t in tiles:
                runs[k](t)
            times[k].append(1000 * (time.perf_counter() - t0) / len(tiles))
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--tiles", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_runtime import photo, photo_tiles

    runners = [session_runner(s, args.threads) for s in args.specs]
    shape = runners[0][0].get_inputs()[0].shape
    tiles = photo_tiles(photo(), int(shape[-1]), args.tiles, args.seed)
    outs = [run(tiles[0]) for _, run in runners]  # warm up
    times = interleaved([run for _, run in runners], tiles, args.rounds)
    base, fastest = statistics.median(times[0]), min(times[0])
    print(f"{args.tiles} tiles of {shape[-1]}x{shape[-1]}, {args.threads} thread(s), {args.rounds} interleaved rounds")
    print("| spec | ms / tile (median) | speed vs first | fastest round vs first's | max abs diff vs first |")
    print("|---|---|---|---|---|")
    rows = []
    for spec, ts, out in zip(args.specs, times, outs):
        med = statistics.median(ts)
        print(f"| {spec} | {med:.1f} ({min(ts):.0f}-{max(ts):.0f}) | {base / med:.3f}x | {fastest / min(ts):.3f}x | "
              f"{float(np.abs(out - outs[0]).max()):.3g} |")
        rows.append({"spec": spec, "ms_per_tile_median": med, "ms_min": min(ts), "ms_max": max(ts),
                     "speed_vs_first": base / med, "fastest_vs_first": fastest / min(ts),
                     "max_abs_diff_vs_first": float(np.abs(out - outs[0]).max())})
    from results import save

    save("ort_compare", rows, params={"tile": int(shape[-1]), "tiles": args.tiles, "threads": args.threads,
                                      "rounds": args.rounds, "seed": args.seed})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
