"""The simplifier path of ``hrx export``: node counts and ONNX Runtime CPU time of each path, in one run.

    python benchmarks/bench_simplify.py --tile 64 --threads 2 --rounds 12 --tiles 8

Each model is exported once without simplifier nor passes (the exporter's own optimizer has run), then
simplified by onnxsim, by onnxslim and by neither, each followed by the graph passes. For every graph the
table gives its node count, how many nodes are still foldable (a ``Shape`` or a node whose inputs are all
constants: what a further constant folder would remove) and its ms per tile on ONNX Runtime CPU (median
of the rounds; the variants interleaved, each round starting with the next one, on the same photo
tiles), with the max abs difference to the onnxsim graph's output.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

MODELS = ("hrx-t", "hrx-t-plugin", "default-x2", "hydra-t")


def _model(name: str):
    import torch

    import hrx
    from hrx.checkpoint import bundled_models

    if name in bundled_models():
        return bundled_models()[name], "native"
    torch.manual_seed(0)
    model = hrx.create_model(name.removesuffix("-plugin"), scale=2)
    with torch.no_grad():  # trained-like weights: an untrained HRX model is bicubic and routes trivially
        g = torch.Generator().manual_seed(2)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model, "plugin" if name.endswith("-plugin") else "native"


def foldable(model) -> int:
    """Nodes a constant folder would still remove: Shape, and non-Constant nodes with only constant inputs."""
    from hrx.export.onnx_tools import Graph

    g = Graph(model)
    return sum(n.op_type == "Shape" or (n.op_type != "Constant" and bool(n.input)
                                        and all(g.is_const(i) for i in n.input if i)) for n in g.nodes)


def variants(raw) -> dict[str, object]:
    from hrx.export.onnx_export import _onnxsim, _onnxslim
    from hrx.export.passes import optimize

    out = {}
    for name, simplify in (("onnxsim", _onnxsim), ("onnxslim", _onnxslim), ("none", lambda m: m)):
        model = simplify(copy.deepcopy(raw))
        optimize(model)
        out[name] = model
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", choices=MODELS, help="default: all")
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--tiles", type=int, default=8)
    args = ap.parse_args(argv)

    import onnx

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_ort_compare import interleaved, session_runner
    from bench_runtime import photo, photo_tiles
    from results import header, save

    from hrx.export.onnx_export import export_onnx

    rows = []
    print(f"tile {args.tile}, {args.threads} thread(s), {args.rounds} interleaved rounds of {args.tiles} tiles")
    print("\n".join(header(["model", "simplifier", "nodes", "foldable", "ms / tile", "vs onnxsim", "max abs diff"])))
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.model or MODELS:
            model, ops = _model(name)
            raw_path = Path(tmp) / f"{name}-raw.onnx"
            export_onnx(model, raw_path, tile=args.tile, ops=ops, simplify_graph=False, graph_passes=False)
            graphs = variants(onnx.load(str(raw_path)))
            runs = {}
            for v, g in graphs.items():
                path = Path(tmp) / f"{name}-{v}.onnx"
                onnx.save(g, str(path))
                runs[v] = session_runner(str(path), args.threads)[1]
            tiles = photo_tiles(photo(), args.tile, args.tiles, 0)
            outs = {v: run(tiles[0]) for v, run in runs.items()}  # warm up
            times = dict(zip(runs, interleaved(list(runs.values()), tiles, args.rounds)))
            base = statistics.median(times["onnxsim"])
            for v, g in graphs.items():
                med = statistics.median(times[v])
                row = {"model": name, "simplifier": v, "nodes": len(g.graph.node), "foldable": foldable(g),
                       "ms_per_tile": med, "speed_vs_onnxsim": base / med,
                       "max_abs_diff": float(np.abs(outs[v] - outs["onnxsim"]).max())}
                rows.append(row)
                print(f"| {name} | {v} | {row['nodes']} | {row['foldable']} | {med:.1f} | {base / med:.3f}x | "
                      f"{row['max_abs_diff']:.2g} |", flush=True)
    save("simplify", rows, params=vars(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
