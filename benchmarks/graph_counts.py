"""Node counts per op type: an ONNX file's own and those of OpenVINO's compiled graph (after its fusions;
``Reorder`` is a layout conversion it inserted). Deterministic, so they compare formulations on a loaded
machine where times cannot be taken.

    python benchmarks/graph_counts.py A.onnx B.onnx                  # whole files, side by side
    python benchmarks/graph_counts.py A.onnx --scope detail.experts.3  # only nodes of that module scope
    python benchmarks/graph_counts.py --block ssm --side 64           # one SSMixer (hrx-s widths), exported here

A compiled node's scope is that of the ONNX node or tensor it is named after (as in ``profile_graph.py``).
``--block ssm`` exports a fused ``SSMixer`` on a ``[1, C, side, side]`` map for each ``--target``.
The data-movement line sums the op types of ``profile_graph.MOVE_TYPES``. Both tables are saved
(``benchmarks/results.py``, name ``graph_counts`` or ``--name``) unless ``--no-save``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from profile_graph import MOVE_TYPES, node_scopes, scope_of  # noqa: E402
from results import save  # noqa: E402


def onnx_counts(path: str, scope: str = "") -> Counter:
    """ONNX op types of the file's nodes (those under ``scope`` when given)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    scopes = node_scopes(model)
    return Counter(n.op_type for n in model.graph.node if scopes.get(n.name, "").startswith(scope))


def openvino_counts(path: str, scope: str = "") -> Counter:
    """Layer types of OpenVINO's compiled CPU graph, FP32 (those under ``scope`` when given)."""
    import onnx
    import openvino as ov

    scopes = node_scopes(onnx.load(path, load_external_data=False)) if scope else {}
    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out: Counter = Counter()
    for op in compiled.get_runtime_model().get_ops():
        kind = op.get_rt_info()["layerType"].astype(str)
        if kind in ("Parameter", "Result", "Input", "Output", "Const"):
            continue
        if scope and not scope_of(op.get_friendly_name(), scopes).startswith(scope):
            continue
        out[kind] += 1
    return out


def export_block(block: str, side: int, target: str, folder: str, channels: int = 32) -> str:
    """One fused block exported as the exporter does (simplified, ``target``'s graph passes); returns the path."""
    import onnx
    import torch

    from hrx.blocks.ssm import SSMixer
    from hrx.export.onnx_export import mark_scopes, node_scopes as exporter_scopes, simplify, trace_to_onnx
    from hrx.export.passes import TARGET_PASSES, optimize

    if block != "ssm":
        raise SystemExit(f"error: --block: unknown block {block!r} (known: ssm)")
    torch.manual_seed(0)
    model = torch.nn.Sequential(SSMixer(channels, d_state=8, head_dim=16, chunk=32)).eval()
    model[0].fuse()
    proto = trace_to_onnx(model, torch.rand(1, channels, side, side), "native", 18)
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    names = exporter_scopes(proto)
    proto, _ = simplify(proto)
    mark_scopes(proto, names)
    optimize(proto, TARGET_PASSES[target])
    path = str(Path(folder) / f"{block}-{side}-{target}.onnx")
    onnx.save(proto, path)
    return path


def table(columns: dict[str, Counter]) -> str:
    """One row per op type, one column per graph; totals and data movement at the bottom."""
    kinds = sorted({k for c in columns.values() for k in c}, key=lambda k: (-max(c[k] for c in columns.values()), k))
    width = max([len(k) for k in kinds] + [14])
    heads = list(columns)
    lines = [f"{'':{width}}  " + "  ".join(f"{h[-24:]:>24}" for h in heads)]
    for k in kinds:
        lines.append(f"{k:{width}}  " + "  ".join(f"{columns[h][k]:>24}" for h in heads))
    lines.append(f"{'total':{width}}  " + "  ".join(f"{sum(columns[h].values()):>24}" for h in heads))
    lines.append(f"{'data movement':{width}}  "
                 + "  ".join(f"{sum(v for k, v in columns[h].items() if k in MOVE_TYPES):>24}" for h in heads))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="ONNX files to count")
    ap.add_argument("--scope", default="", help="count only nodes of this module scope (prefix)")
    ap.add_argument("--block", help="export this block alone and count it (ssm)")
    ap.add_argument("--side", type=int, default=64, help="--block: the map side")
    ap.add_argument("--channels", type=int, default=32, help="--block: the block's channels")
    ap.add_argument("--target", action="append", choices=("openvino", "onnxruntime"),
                    help="--block: the graph passes' target (repeatable; default both)")
    ap.add_argument("--keep", help="--block: write the exported files to this folder")
    ap.add_argument("--name", default="graph_counts", help="results name")
    ap.add_argument("--no-save", action="store_true", help="print only")
    args = ap.parse_args(argv)
    files = list(args.files)
    folder = args.keep or tempfile.mkdtemp(prefix="hrx-graph-counts-")
    Path(folder).mkdir(parents=True, exist_ok=True)
    if args.block:
        files += [export_block(args.block, args.side, t, folder, args.channels)
                  for t in args.target or ("openvino", "onnxruntime")]
    if not files:
        ap.error("give ONNX files or --block")
    graphs = {"onnx": {f: onnx_counts(f, args.scope) for f in files},
              "openvino": {f: openvino_counts(f, args.scope) for f in files}}
    print("ONNX nodes")
    print(table(graphs["onnx"]))
    print("\nOpenVINO compiled (CPU, f32)")
    print(table(graphs["openvino"]))
    if not args.no_save:
        save(args.name, result_rows(graphs), params={k: v for k, v in vars(args).items() if k != "no_save"})
    return 0


def result_rows(graphs: dict[str, dict[str, Counter]]) -> list[dict]:
    """One row per graph kind and op type, a column per file (its name), then the totals and data movement."""
    rows = []
    for kind, columns in graphs.items():
        kinds = sorted({k for c in columns.values() for k in c})
        for op in kinds + ["total", "data movement"]:
            row = {"graph": kind, "op": op}
            for f, c in columns.items():
                row[Path(f).name] = (sum(c.values()) if op == "total" else
                                     sum(v for k, v in c.items() if k in MOVE_TYPES) if op == "data movement" else c[op])
            rows.append(row)
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
