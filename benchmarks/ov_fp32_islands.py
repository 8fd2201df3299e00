"""Can OpenVINO keep HRX's FP32 islands in f32 inside a BF16 run? docs/cpu-engines.md, "FP32 islands".

The island nodes (:func:`hrx.export.precision.find_islands`, mapped to OpenVINO's nodes by their output
tensor names, plus the unnamed nodes the frontend made from the same ONNX node) get OpenVINO's
``DisablePrecisionConversion`` runtime attribute (``dynamic:f16,bf16``), written into the IR's
``<rt_info>`` (Python cannot make the attribute itself). Rows: BF16 without markers, with the island
nodes marked, with every node marked; each with its PSNR against OpenVINO f32 on the fidelity gate's
photos, the precision the CPU plugin ran the island-type nodes in, and a smoke-level time per tile.

    python benchmarks/ov_fp32_islands.py hrx/weights/default-x2.onnx [--threads 2] [--rounds 5]
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from hrx.metrics import psnr_from_mse

sys.path.insert(0, str(Path(__file__).resolve().parent))

ISLAND_TYPES = ("Softmax", "MVN", "RMS", "CumSum", "Reduce", "Subgraph", "Convolution", "FullyConnected", "MatMul")
MARKER = "dynamic:f16,bf16"


def island_nodes(model, onnx_path: str) -> set[str]:
    from hrx.export.precision import find_islands
    from hrx.interface import load_onnx

    graph = load_onnx(onnx_path)
    names = {n for rule in find_islands(graph).values() for n in rule}
    tensors = {o for node in graph.graph.node if node.name in names for o in node.output}
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    marked = {name for name, op in ops.items() if any(tensors & out.get_names() for out in op.outputs())}
    stack = list(marked)
    while stack:
        for inp in ops[stack.pop()].inputs():
            src = inp.get_source_output()
            parent = src.get_node()
            name = parent.get_friendly_name()
            if name not in marked and parent.get_type_name() not in ("Parameter", "Constant") and not src.get_names():
                marked.add(name)
                stack.append(name)
    return marked


def marked_ir(xml: Path, out: Path, which) -> int:
    tree = ET.parse(xml)
    count = 0
    for layer in tree.getroot().iter("layer"):
        if which(layer):
            rt = layer.find("rt_info")
            if rt is None:
                rt = ET.SubElement(layer, "rt_info")
            for a in rt.findall("attribute"):
                if a.get("name") == "DisablePrecisionConversion":
                    rt.remove(a)
            ET.SubElement(rt, "attribute", name="DisablePrecisionConversion", version="0", value=MARKER)
            count += 1
    tree.write(out)
    return count


def main() -> None:
    import openvino as ov

    from hrx.interface import ModelInfo
    from hrx.runtime.precision_policy import gate_images
    from hrx.runtime.tiling import TileSpec, upscale_tiled

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("onnx")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    core = ov.Core()
    info = ModelInfo.from_onnx(args.onnx)
    model = core.read_model(args.onnx)
    islands = island_nodes(model, args.onnx)
    work = Path(tempfile.mkdtemp())
    ov.serialize(model, str(work / "m.xml"), str(work / "m.bin"))
    pictures, source = gate_images(info)
    spec = TileSpec(info.tile, info.tile_overlap, info.scale, info.size_multiple, info.batch, "blend")
    x = np.random.default_rng(0).random((info.batch, info.in_channels, info.tile, info.tile), dtype=np.float32)

    def run(xml: Path, hint: str):
        compiled = core.compile_model(core.read_model(str(xml), str(work / "m.bin")), "CPU",
                                      {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": args.threads})
        request = compiled.create_infer_request()

        def infer(t):
            return request.infer({0: t})[0].copy()

        outs = [np.clip(upscale_tiled(p, infer, spec), 0, 1) for p in pictures]
        infer(x)
        start = time.perf_counter()
        for _ in range(args.rounds):
            infer(x)
        ms = (time.perf_counter() - start) / args.rounds * 1e3
        kinds = collections.Counter()
        for op in compiled.get_runtime_model().get_ordered_ops():
            rt = op.get_rt_info()
            kind = rt["layerType"].astype(str)
            if kind in ISLAND_TYPES:
                kinds[f"{kind}:{rt['runtimePrecision'].astype(str)}"] += 1
        return outs, ms, dict(sorted(kinds.items()))

    reference, ms_f32, _ = run(work / "m.xml", "f32")
    n = sum(a.size for a in reference)
    rows = [{"variant": "f32", "nodes_marked": 0, "psnr_vs_f32": float("inf"), "ms_per_tile": round(ms_f32, 2)}]
    variants = [("bf16", None), ("bf16, island nodes marked", lambda layer: layer.get("name") in islands),
                ("bf16, every node marked", lambda layer: layer.get("type") not in ("Const", "Parameter", "Result"))]
    print(f"{args.onnx}: {len(islands)} OpenVINO nodes in islands; PSNR against f32 on {source}")
    for label, which in variants:
        xml = work / "m.xml"
        count = 0
        if which is not None:
            xml = work / "v.xml"
            count = marked_ir(work / "m.xml", xml, which)
        outs, ms, kinds = run(xml, "bf16")
        se = sum(float(np.sum((a.astype(np.float64) - b) ** 2)) for a, b in zip(outs, reference))
        psnr = psnr_from_mse(se / n)
        rows.append({"variant": label, "nodes_marked": count, "psnr_vs_f32": round(psnr, 2), "ms_per_tile": round(ms, 2),
                     "runtime_precision": kinds})
        print(f"  {label:26s} marked {count:5d}  {psnr:6.2f} dB  {ms:7.1f} ms/tile  {kinds}")
    try:
        from results import save
    except ImportError:
        print("benchmarks/results.py not found: not recorded")
        return
    save("ov_fp32_islands", rows, params={"onnx": args.onnx, "threads": args.threads, "rounds": args.rounds,
                                          "openvino": ov.__version__})


if __name__ == "__main__":
    main()
