"""Ray Data with 1 actor against plain `hrx upscale` on the same folder: wall time and overhead per image.

    python benchmarks/bench_ray.py [--engine m.onnx] [--images 16] [--size 96] [--rounds 2]

Both sides use one ONNX Runtime thread (one actor with 1 CPU against one local session with --threads 1),
interleaved, round after round, on a local cluster started once with ray.init(num_cpus=2) (its start is
printed apart). Without --engine, hrx-t x2 with perturbed weights is exported at tile 64 (dynamic batch).
Prints the seconds of each run, the Ray/plain ratio and (ray - plain) / images.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _engine(tmp: Path) -> Path:
    import torch

    import hrx
    from hrx.export.onnx_export import export_onnx

    torch.manual_seed(0)
    model = hrx.create_model("hrx-t", scale=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    return export_onnx(model, tmp / "hrx-t.onnx", tile=64, batch="dynamic").path


def _folder(tmp: Path, count: int, size: int) -> Path:
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    folder = tmp / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(count):
        photo = photos[k % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
        Image.fromarray(photo[y:y + size, x:x + size]).save(folder / f"{k:03d}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", type=Path)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import ray

    from hrx.runtime.distributed import RayOptions, run_batch_ray
    from hrx.runtime.factory import BackendRequest, open_backend
    from hrx.runtime.pipeline import BatchOptions, plan_jobs, run_batch
    from hrx.runtime.tiling import TileSpec

    tmp = Path(tempfile.mkdtemp(prefix="hrx-bench-ray-"))
    try:
        engine = args.engine or _engine(tmp)
        folder = _folder(tmp, args.images, args.size)
        request = BackendRequest(engine=Path(engine).resolve(), backend="onnxrt-cpu", threads=1)
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        print(f"ray.init(num_cpus=2): {time.perf_counter() - t0:.1f} s (once, not counted below)")
        plain, distributed = [], []
        for r in range(args.rounds):
            out = tmp / f"plain{r}"
            t0 = time.perf_counter()
            backend = open_backend(request)
            i = backend.info
            spec = TileSpec.from_info(i, merge="blend")  # hrx upscale's default, as the actors use
            report = run_batch(backend, plan_jobs([folder], out), spec, BatchOptions())
            backend.close()
            plain.append(time.perf_counter() - t0)
            assert report.count("done") == args.images
            out = tmp / f"ray{r}"
            t0 = time.perf_counter()
            report = run_batch_ray(request, plan_jobs([folder], out), None, "blend", BatchOptions(), RayOptions(actors=1))
            distributed.append(time.perf_counter() - t0)
            assert report.count("done") == args.images
            same = all((tmp / f"plain{r}" / p.name).read_bytes() == p.read_bytes() for p in out.iterdir())
            print(f"round {r + 1}: plain {plain[-1]:.2f} s, ray (1 actor) {distributed[-1]:.2f} s, "
                  f"outputs identical: {same}")
        p, d = statistics.median(plain), statistics.median(distributed)
        print(f"{args.images} images of {args.size}x{args.size}, tile {i.tile}: plain {p:.2f} s "
              f"({p / args.images * 1000:.0f} ms/image), ray 1 actor {d:.2f} s, ratio ray/plain {d / p:.2f}, "
              f"overhead {(d - p) / args.images * 1000:.0f} ms/image (actor start included)")
        from results import save

        save("ray", [{"images": args.images, "size": f"{args.size}x{args.size}", "tile": i.tile, "plain_s": p,
                      "ray_1_actor_s": d, "ratio": d / p, "overhead_ms_per_image": (d - p) / args.images * 1000}],
             params={"rounds": args.rounds, "threads": 1, "engine": str(args.engine or "hrx-t x2, dynamic batch")})
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
