"""Where an ONNX graph spends its time on a CPU engine: per op type, per block, data movement, GFLOP/s.

    python benchmarks/profile_graph.py MODEL.onnx --engine openvino            # OpenVINO, PERF_COUNT
    python benchmarks/profile_graph.py MODEL.onnx --engine ort                 # ONNX Runtime's profiler
    python benchmarks/profile_graph.py A.onnx B.onnx --engine openvino --engine ort --runs 30

Each file runs ``--runs`` times (after ``--warmup`` runs) on every ``--engine`` with ``--threads`` threads,
the files and engines interleaved run by run (each run starting with the next one), on the same random
tile. OpenVINO: one compiled model, latency mode, one stream, precision pinned (``--precision f32`` or
``bf16``: ``INFERENCE_PRECISION_HINT``), ``PERF_COUNT`` on; its runtime graph's nodes (after OpenVINO's
fusions: ``Reorder`` is the layout conversion it inserts, ``Subgraph`` an element-wise chain it fused)
are timed by ``get_profiling_info``. ONNX Runtime: one session (``enable_profiling``), its ``Node``
events. The tile time is the median wall time of a run; per-node times are sums over the runs.

Printed and saved (``benchmarks/results.py``, name ``profile_graph`` or ``--name``): for each file and
engine, the ms per tile (with the profiler on), GFLOP/s (2 x the multiply-accumulates of its Conv and
MatMul nodes, :func:`hrx.export.onnx_export.count_macs`, per second), the data-movement share (the op
types of :data:`MOVE_TYPES`), one row per op type and one per block. Blocks are the PyTorch module
scopes that ``hrx export`` records on each node (``hrx_scope``), cut to ``--depth`` components
(``stage1.0.attn`` at depth 3); a node without one (added by a graph pass) takes its input's.
OpenVINO names a fused node after one of the ONNX nodes in it, so its time goes to that node's block.
Node counts per op type of the ONNX file are in the rows too (the ``count`` column of the op-type rows
for ONNX Runtime, the ``onnx_nodes`` rows), the same on every machine.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ENGINES = ("openvino", "ort")
# op types (ONNX's and OpenVINO's runtime graph's) that only move data
MOVE_TYPES = frozenset({
    "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Expand", "Tile",
    "Slice", "StridedSlice", "Split", "VariadicSplit", "Concat", "Concatenation", "Gather", "GatherElements",
    "DepthToSpace", "SpaceToDepth", "Pad", "Reorder", "Broadcast", "Roll", "ShuffleChannels", "ReorderInput", "ReorderOutput"})
from hrx.export.onnx_export import SCOPE_KEY  # noqa: E402


def node_scopes(model) -> dict[str, str]:
    """``{ONNX node name or output name: module scope}`` from the ``hrx_scope`` node metadata; nodes without
    one take the scope of their first input that has one (graph order, so a chain of new nodes inherits)."""
    scope_of_tensor: dict[str, str] = {}
    out: dict[str, str] = {}
    for node in model.graph.node:
        props = {p.key: p.value for p in node.metadata_props}
        scope = props.get(SCOPE_KEY)
        if scope is None:
            scope = next((scope_of_tensor[i] for i in node.input if i in scope_of_tensor), "")
        for o in node.output:
            scope_of_tensor[o] = scope
            out[o] = scope
        out[node.name] = scope
    return out


def scope_of(name: str, scopes: dict[str, str]) -> str:
    """The scope of a runtime node: its own name, else the longest ONNX node or tensor name it starts with
    (OpenVINO names a fused node ``CONV/WithoutBiases``, a reorder ``SRC_acdb_abcd_DST``)."""
    if name in scopes:
        return scopes[name]
    head = name.split("/")[0]
    parts = head.split("_")
    for k in range(len(parts), 0, -1):
        if "_".join(parts[:k]) in scopes:
            return scopes["_".join(parts[:k])]
    return ""


def top_rows(rows: list[dict], top: int) -> list[dict]:
    """The totals and the first ``top`` rows of each (file, engine, kind), in order: what RESULTS.md shows
    (every op type's count is printed by ``--no-save`` runs too)."""
    seen: Counter = Counter()
    out = []
    for r in rows:
        key = (r["file"], r["engine"], r["kind"])
        if r["what"] == "total" or seen[key] < top:
            out.append(r)
            seen[key] += r["what"] != "total"
    return out


def block(scope: str, depth: int) -> str:
    return ".".join(scope.split(".")[:depth]) if scope else "(graph)"


class Profile:
    """One file on one engine: wall times of the runs, and per runtime node (name, type) its summed time."""

    def __init__(self) -> None:
        self.walls: list[float] = []
        self.nodes: dict[tuple[str, str], float] = defaultdict(float)  # (name, type) -> us over all runs
        self.runs = 0


def openvino_runner(path: str, threads: int, precision: str, x: np.ndarray) -> tuple[Callable[[], None], Callable[[Profile], None]]:
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": precision, "NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": str(threads),
              "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": "YES"}
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()
    request.set_input_tensor(ov.Tensor(x))

    def run() -> None:
        request.infer()

    def collect(p: Profile) -> None:
        for info in request.get_profiling_info():
            if info.status == info.Status.EXECUTED:
                p.nodes[(info.node_name, info.node_type)] += info.real_time.total_seconds() * 1e6

    return run, collect


def ort_runner(path: str, threads: int, precision: str, x: np.ndarray) -> tuple[Callable[[], None], Callable[[Profile], None]]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="hrx-ort-profile-"), "ort")
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run() -> None:
        sess.run(None, {name: x})

    def collect(p: Profile) -> None:
        events = json.loads(Path(sess.end_profiling()).read_text())
        seen_runs = sum(1 for e in events if e.get("name") == "model_run")
        warm = max(0, seen_runs - p.runs)  # the profile also holds the warm-up runs: skip them
        run_index = 0
        for e in events:
            if e.get("name") == "model_run":
                run_index += 1
                continue
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or run_index < warm:
                continue
            args = e.get("args", {})
            p.nodes[(e["name"].removesuffix("_kernel_time"), args.get("op_name", "?"))] += float(e.get("dur", 0))

    return run, collect


RUNNERS = {"openvino": openvino_runner, "ort": ort_runner}


def profile(paths: list[str], engines: list[str], threads: int, precision: str, runs: int, warmup: int,
            seed: int = 0) -> dict[tuple[str, str], Profile]:
    import onnx

    first = onnx.load(paths[0], load_external_data=False)
    dims = [d.dim_value or 1 for d in first.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(seed).random(dims, dtype=np.float32)
    runners, collectors, profiles = [], [], {}
    for path in paths:
        for engine in engines:
            run, collect = RUNNERS[engine](path, threads, precision, x)
            for _ in range(warmup):
                run()
            profiles[(path, engine)] = Profile()
            runners.append(((path, engine), run))
            collectors.append(((path, engine), collect))
    # openvino's profiling info is the last run's: collect after each; ort's profile is read once at the end
    for r in range(runs):
        for k in range(len(runners)):
            key, run = runners[(r + k) % len(runners)]
            start = time.perf_counter()
            run()
            profiles[key].walls.append((time.perf_counter() - start) * 1e3)
            profiles[key].runs += 1
            if key[1] == "openvino":
                dict(collectors)[key](profiles[key])
    for key, collect in collectors:
        if key[1] == "ort":
            collect(profiles[key])
    return profiles


def rows_for(path: str, engine: str, p: Profile, depth: int, macs: int, onnx_counts: Counter,
             scopes: dict[str, str]) -> list[dict]:
    total = sum(p.nodes.values()) or 1.0
    ms = statistics.median(p.walls)
    by_type: dict[str, float] = defaultdict(float)
    count_type: Counter = Counter()
    by_block: dict[str, float] = defaultdict(float)
    move_block: dict[str, float] = defaultdict(float)
    for (name, typ), us in p.nodes.items():
        by_type[typ] += us
        count_type[typ] += 1
        b = block(scope_of(name, scopes), depth)
        by_block[b] += us
        if typ in MOVE_TYPES:
            move_block[b] += us
    move = sum(v for t, v in by_type.items() if t in MOVE_TYPES)
    file = Path(path).name
    rows = [{"file": file, "engine": engine, "kind": "tile", "what": "total", "ms_per_tile": ms,
             "share": 1.0, "move_share": move / total, "gflops": 2 * macs / ms / 1e6,
             "count": sum(onnx_counts.values())}]
    for typ, us in sorted(by_type.items(), key=lambda kv: -kv[1]):
        rows.append({"file": file, "engine": engine, "kind": "op", "what": typ, "ms_per_tile": us / p.runs / 1e3,
                     "share": us / total, "move": typ in MOVE_TYPES, "count": count_type[typ]})
    for b, us in sorted(by_block.items(), key=lambda kv: -kv[1]):
        rows.append({"file": file, "engine": engine, "kind": "block", "what": b, "ms_per_tile": us / p.runs / 1e3,
                     "share": us / total, "move_share": move_block[b] / us if us else 0.0})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="+", help="ONNX files (exported by hrx export)")
    ap.add_argument("--engine", action="append", choices=ENGINES, help="repeatable; default: openvino")
    ap.add_argument("--precision", default="f32", choices=("f32", "bf16"), help="OpenVINO's compute precision")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--depth", type=int, default=3, help="module path components that name a block")
    ap.add_argument("--top", type=int, default=12, help="op types and blocks printed per file and engine")
    ap.add_argument("--name", default="profile_graph", help="results name (benchmarks/results/NAME.json)")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    engines = args.engine or ["openvino"]

    import onnx

    from hrx.export.onnx_export import count_macs

    profiles = profile(args.model, engines, args.threads, args.precision, args.runs, args.warmup)
    rows: list[dict] = []
    for path in args.model:
        model = onnx.load(path)
        macs, scopes = count_macs(model), node_scopes(model)
        counts = Counter(n.op_type for n in model.graph.node)
        rows.append({"file": Path(path).name, "engine": "-", "kind": "onnx_nodes", "what": "total",
                     "count": sum(counts.values())})
        rows += [{"file": Path(path).name, "engine": "-", "kind": "onnx_nodes", "what": t, "count": c,
                  "move": t in MOVE_TYPES} for t, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        for engine in engines:
            got = rows_for(path, engine, profiles[(path, engine)], args.depth, macs, counts, scopes)
            rows += got
            tile = got[0]
            print(f"\n{Path(path).name} on {engine} ({args.precision if engine == 'openvino' else 'f32'}, "
                  f"{args.threads} threads): {tile['ms_per_tile']:.2f} ms per tile, {tile['gflops']:.1f} GFLOP/s, "
                  f"data movement {100 * tile['move_share']:.1f}% of node time; {tile['count']} ONNX nodes")
            for kind in ("op", "block"):
                print(f"  {'op type' if kind == 'op' else 'block':<28} {'ms':>8} {'share':>7}")
                for r in [r for r in got if r["kind"] == kind][:args.top]:
                    print(f"  {r['what']:<28} {r['ms_per_tile']:8.3f} {100 * r['share']:6.1f}%")
    if not args.no_save:
        from results import save

        save(args.name, top_rows(rows, args.top), params={k: v for k, v in vars(args).items() if k != "no_save"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
