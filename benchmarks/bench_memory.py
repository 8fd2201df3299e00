"""Peak memory (RSS) of ``hrx upscale`` on one large image, per backend and scale.

    python benchmarks/bench_memory.py                        # 2048x2048 RGB, x2 and x4, ONNX Runtime and PyTorch
    python benchmarks/bench_memory.py --side 1024 --scales 2 --backends onnxrt

Each run is a fresh ``python -m hrx.cli.main upscale`` process (bundled default-x2 / default-x4; ONNX
Runtime on their cached ONNX export, tile 128; PyTorch on the checkpoint, tile 256); its peak RSS
comes from ``wait4`` (the kernel's ``ru_maxrss``). The goal of issue 14: peak RSS <= the decoded output
in float32 (W * s * H * s * 3 * 4 bytes) + 1 GiB. The input is a 2048x2048 photo made by tiling and
mirroring scikit-image's astronaut (PNG, 8-bit).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GIB = 1024**3


def make_input(path: Path, side: int) -> Path:
    from PIL import Image

    from hrx.data import skimage_photos

    photo = np.asarray(Image.open({r.name: r.path for r in skimage_photos()}["astronaut"]).convert("RGB"))
    reps = -(-side // photo.shape[0])
    row = np.concatenate([photo if k % 2 == 0 else photo[:, ::-1] for k in range(reps)], axis=1)
    full = np.concatenate([row if k % 2 == 0 else row[::-1] for k in range(reps)], axis=0)[:side, :side]
    Image.fromarray(np.ascontiguousarray(full)).save(path)
    return path


def measure(args: list[str]) -> tuple[int, float, int]:
    """(peak RSS bytes, seconds, exit code) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "hrx.cli.main", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code:
        print(err, file=sys.stderr)
    return usage.ru_maxrss * 1024, time.perf_counter() - start, code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--scales", default="2,4")
    ap.add_argument("--backends", default="onnxrt,torch")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)

    from hrx.runtime.factory import default_engine

    work = Path(tempfile.mkdtemp(prefix="hrx-mem-"))
    src = make_input(work / "in.png", args.side)
    print(f"input {args.side}x{args.side} RGB 8-bit ({src.stat().st_size / 2**20:.1f} MiB PNG); peak RSS of "
          f"`python -m hrx.cli.main upscale {src.name} -o out/ ...`; goal: output float32 + 1 GiB")
    print(f"{'backend':<12} {'scale':>5} {'output':>11} {'out f32':>9} {'goal':>9} {'peak RSS':>9} {'vs goal':>8} "
          f"{'seconds':>8}")
    rows = []
    for scale in (int(s) for s in args.scales.split(",")):
        name = f"default-x{scale}"
        for backend in args.backends.split(","):
            if backend == "onnxrt":
                flags = ["--engine", str(default_engine(name)), "--backend", "onnxrt-cpu"]
            else:
                flags = ["--model", name, "--backend", "torch"]
            out = work / f"out-{backend}-x{scale}"
            rss, seconds, code = measure(["upscale", str(src), "-o", str(out), "-q", "--threads", str(args.threads),
                                          *flags])
            side = args.side * scale
            f32 = side * side * 3 * 4
            goal = f32 + GIB
            status = f"{rss / goal:>7.2f}x" if code == 0 else f"exit {code}"
            print(f"{backend:<12} {'x' + str(scale):>5} {f'{side}x{side}':>11} {f32 / GIB:>7.2f}Gi {goal / GIB:>7.2f}Gi "
                  f"{rss / GIB:>7.2f}Gi {status:>8} {seconds:>8.1f}", flush=True)
            rows.append({"backend": backend, "scale": scale, "output": f"{side}x{side}", "output_f32_gib": f32 / GIB,
                         "goal_gib": goal / GIB, "peak_rss_gib": rss / GIB, "exit_code": code, "seconds": seconds})
    from results import save

    save("memory", rows, params={"side": args.side, "threads": args.threads})
    return 0


if __name__ == "__main__":
    sys.exit(main())
