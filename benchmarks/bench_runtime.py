"""Runtime benchmark (a script, not a test): prints, measured in one run on the same tiles,

1. ONNX Runtime CPU on the fused export vs the PyTorch eager training-side model (and PyTorch on the
   fused model, to separate what fusion buys from what the runtime buys); target: ORT >= 2x eager;
2. the tiling overhead: whole-image throughput at the model's default overlap vs non-overlapping tiles;
3. tiled vs whole-image quality on a real photo (skimage astronaut): PSNR of the tiled ONNX Runtime result
   against whole-image PyTorch inference of the same model, for ``blend`` and ``crop``, and a seam score
   (mean jump of the error across tile boundaries / mean jump elsewhere; 1.0 = no seam).

The model is ``--arch`` with random weights (speed does not depend on the weights; for quality they are
perturbed by ``--perturb`` so the network is not plain bicubic). Usage::

    python benchmarks/bench_runtime.py                       # hrx-s, x2, tile 128
    python benchmarks/bench_runtime.py --arch hrx-t --tiles 8 --repeats 2 --skip-quality
"""
from __future__ import annotations

import argparse
import os
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="hrx-s")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--tiles", type=int, default=16, help="tiles per timed pass")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per runtime (median reported)")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for both PyTorch and ORT (default 1: on a shared or oversubscribed machine PyTorch's "
                         "OpenMP barriers make multi-threaded eager runs 10x slower and the comparison meaningless)")
    ap.add_argument("--perturb", type=float, default=0.02, help="std of the random weight perturbation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--onnx", type=Path, default=None,
                    help="export to this path and keep it; if it exists, reuse it (same --arch/--scale/--tile/--seed/--perturb)")
    ap.add_argument("--skip-quality", action="store_true")
    args = ap.parse_args()

    from hrx.export import export_onnx

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = hrx.create_model(args.arch, scale=args.scale).eval()
    perturb(model, args.perturb, args.seed)
    fused = hrx.fuse(model)
    img = photo()
    print(f"# {args.arch} x{args.scale}, tile {args.tile}, batch 1, {args.threads} threads, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs visible")

    with tempfile.TemporaryDirectory() as tmp:
        path = args.onnx or Path(tmp) / f"{args.arch}.onnx"
        if not path.exists():
            t0 = time.perf_counter()
            export_onnx(model, path, tile=args.tile, batch=1)
            print(f"exported {path.name} in {time.perf_counter() - t0:.0f} s")
        ort = OnnxRuntimeBackend(path, "cpu", threads=args.threads)

        # 1. runtimes on the same tiles, interleaved so machine load hits all alike
        tiles = photo_tiles(img, args.tile, args.tiles, args.seed)
        runners = {"pytorch eager (training model)": torch_runner(model), "pytorch fused": torch_runner(fused),
                   "onnxruntime cpu (fused export)": ort.infer}
        for run in runners.values():  # warm up
            run(tiles[0])
        times: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(args.repeats):
            for name, run in runners.items():
                times[name].append(seconds_per_pass(run, tiles))
        eager = statistics.median(times["pytorch eager (training model)"])
        mp = args.tiles * args.tile * args.tile / 1e6
        print(f"\n## runtimes: {args.tiles} tiles of {args.tile}x{args.tile} from the photo, median of {args.repeats} passes")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"{name:32s} {1000 * med / args.tiles:8.1f} ms/tile {mp / med:7.3f} MP/s in   x{eager / med:.2f} vs eager")
        err = max(float(np.abs(ort.infer(t) - runners["pytorch eager (training model)"](t)).max()) for t in tiles[:4])
        print(f"max |onnxruntime - eager| on 4 tiles: {err:.2e}")

        # 2. tiling overhead on the whole photo
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

        # 3. tiled vs whole-image quality on the photo
        if not args.skip_quality:
            with torch.inference_mode():
                whole = model(torch.from_numpy(img)[None]).numpy()[0]
            print(f"\n## tiled (onnxruntime, tile {info.tile}) vs whole-image PyTorch eager, same model, {img.shape[2]}x{img.shape[1]} photo")
            for overlap in (info.tile_overlap, 0):
                for merge in ("blend", "crop"):
                    spec = TileSpec(info.tile, overlap, info.scale, info.size_multiple, 1, merge)
                    tiled = upscale_tiled(img, ort.infer, spec)
                    print(f"overlap {overlap:3d} (stride {spec.stride:3d}) {merge:5s}  PSNR {psnr(tiled, whole):6.2f} dB  "
                          f"max |diff| {float(np.abs(tiled - whole).max()):.4f}  "
                          f"seam score {seam_score(tiled, whole, spec, *img.shape[1:]):.2f}")
        ort.close()


if __name__ == "__main__":
    main()
