"""FP16 numerics on the CPU: the bundled models exported with `--precision fp16`, run per op in half
precision (`fp16-ref`: onnx ReferenceEvaluator, every op output rounded to its declared type),
against the FP32 PyTorch model on photo tiles (skimage's bundled images); and an overflow probe:
the same FP32 graph converted to half naively (everything in half) vs with hrx's FP32 islands,
with inputs scaled so that norm variances pass 65504.

    python benchmarks/bench_fp16.py [--tile 64] [--tiles 3] [--models default-x2,default-x4]

Prints one table per part. Slow by design (NumPy kernels): small tiles.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hrx.metrics import psnr


def photo_tiles(tile: int, count: int) -> np.ndarray:
    import skimage.data as data

    names = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "immunohistochemistry")
    tiles = []
    for k, name in enumerate(names[:count]):
        img = np.asarray(getattr(data, name)(), dtype=np.float32)[..., :3] / 255.0
        y, x = (img.shape[0] // 3 + 17 * k) // 8 * 8, (img.shape[1] // 3 + 29 * k) // 8 * 8
        tiles.append(img[y:y + tile, x:x + tile].transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(tiles))


def bundled(names: list[str], tile: int, count: int, folder: Path) -> list[dict]:
    import onnxruntime as ort

    import hrx
    from hrx.export.onnx_export import export_onnx
    from hrx.export.reference import HalfReference

    print(f"\nBundled models, FP16 graph vs FP32 PyTorch, {count} photo tiles of {tile}x{tile} (PSNR dB, min over tiles)")
    print(f"{'model':12s} {'fp16-ref':>9s} {'ORT-CPU fp16':>13s} {'ORT-CPU fp32':>13s} {'bicubic':>8s} "
          f"{'Casts':>6s} {'s/tile ref':>10s}")
    out = []
    for name in names:
        fp16_path, fp32_path = folder / f"{name}.fp16.onnx", folder / f"{name}.onnx"
        res = export_onnx(name, fp16_path, tile=tile, precision="fp16")
        export_onnx(name, fp32_path, tile=tile)
        model = hrx.load_model(name).eval()
        ref = HalfReference(fp16_path)
        s16 = ort.InferenceSession(str(fp16_path), providers=["CPUExecutionProvider"])
        s32 = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
        rows = {"ref": [], "ort16": [], "ort32": [], "bic": []}
        seconds = 0.0
        for t in photo_tiles(tile, count):
            x = t[None]
            with torch.no_grad():
                want = model(torch.from_numpy(x)).numpy()
            start = time.perf_counter()
            got = ref.run({"input": x})[0].astype(np.float32)
            seconds += time.perf_counter() - start
            rows["ref"].append(psnr(want, got))
            rows["ort16"].append(psnr(want, s16.run(None, {"input": x})[0]))
            rows["ort32"].append(psnr(want, s32.run(None, {"input": x})[0]))
            bic = F.interpolate(torch.from_numpy(x), scale_factor=model.scale, mode="bicubic", align_corners=False)
            rows["bic"].append(psnr(want, bic.numpy()))
        casts = res.node_counts.get("Cast", 0)
        print(f"{name:12s} {min(rows['ref']):9.2f} {min(rows['ort16']):13.2f} {min(rows['ort32']):13.2f} "
              f"{min(rows['bic']):8.2f} {casts:6d} {seconds / count:10.2f}")
        print(f"{'':12s} {res.precision_line}")
        out.append({"model": name, "fp16_ref_psnr": min(rows["ref"]), "ort_cpu_fp16_psnr": min(rows["ort16"]),
                    "ort_cpu_fp32_psnr": min(rows["ort32"]), "bicubic_psnr": min(rows["bic"]), "casts": casts,
                    "ref_s_per_tile": seconds / count})
    return out


def overflow_probe(tile: int, folder: Path, scales: list[float]) -> list[dict]:
    import onnx
    import onnxruntime as ort

    from hrx.export.onnx_export import export_onnx
    from hrx.export.precision import NAIVE_RULES, convert_precision
    from hrx.export.reference import HalfReference

    path = folder / "x2.probe.onnx"
    export_onnx("default-x2", path, tile=tile)
    fp32 = onnx.load(str(path))
    naive, _ = convert_precision(fp32, "fp16", rules=NAIVE_RULES)
    ours, _ = convert_precision(fp32, "fp16")
    runs = {"naive half": HalfReference(naive), "hrx islands": HalfReference(ours)}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x0 = photo_tiles(tile, 1)
    print(f"\nOverflow probe: default-x2 {tile}x{tile}, photo tile x scale, vs the FP32 graph (max |error| / max |FP32|)")
    print(f"{'scale':>6s} {'max |FP32|':>11s} " + " ".join(f"{k:>24s}" for k in runs))
    out = []
    for s in scales:
        x = (x0 * s).astype(np.float32)
        want = sess.run(None, {"input": x})[0].astype(np.float64)
        top = float(np.abs(want).max())
        cells, row = [], {"scale": s, "max_abs_fp32": top}
        for label, ref in runs.items():
            got = ref.run({"input": x})[0].astype(np.float64)
            finite = bool(np.isfinite(got).all())
            err = float(np.abs(got - want).max()) / top if finite else float("nan")
            cells.append(f"{'finite' if finite else 'inf/NaN':>8s} {err:>15.2e}")
            row[f"{label} finite"], row[f"{label} rel_err"] = finite, err
        print(f"{s:6g} {top:11.1f} " + " ".join(cells))
        out.append(row)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--tiles", type=int, default=3)
    p.add_argument("--models", default="default-x2,default-x4")
    p.add_argument("--probe-tile", type=int, default=32)
    p.add_argument("--scales", default="1,100,300,1000,3000")
    args = p.parse_args()
    from results import save

    with tempfile.TemporaryDirectory() as tmp:
        rows = bundled(args.models.split(","), args.tile, args.tiles, Path(tmp))
        save("fp16", rows, params={"tile": args.tile, "tiles": args.tiles, "models": args.models})
        rows = overflow_probe(args.probe_tile, Path(tmp), [float(s) for s in args.scales.split(",")])
        save("fp16_overflow", rows, params={"model": "default-x2", "tile": args.probe_tile, "scales": args.scales})


if __name__ == "__main__":
    main()
