"""Compare two folders of upscaled images by PSNR (scripts/gpu_check.sh: TensorRT against ONNX Runtime CPU).

    python scripts/compare_images.py A_DIR B_DIR --min-psnr 40

Every image in A_DIR must have a same-named image in B_DIR of the same size; prints the lowest PSNR (RGB, and
luma) over them and exits 1 when it is below ``--min-psnr`` or an image is missing, 0 otherwise.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from hrx.metrics import psnr, psnr_y


def compare(a_dir: Path, b_dir: Path) -> tuple[float, float, int, list[str]]:
    """(lowest RGB PSNR, lowest luma PSNR, images compared, problems) over the images of ``a_dir``."""
    worst, worst_y, count, problems = float("inf"), float("inf"), 0, []
    for a in sorted(p for p in a_dir.iterdir() if p.is_file()):
        b = b_dir / a.name
        if not b.is_file():
            problems.append(f"{b}: missing")
            continue
        x, y = (np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) / 255.0 for p in (a, b))
        if x.shape != y.shape:
            problems.append(f"{a.name}: sizes differ {x.shape} vs {y.shape}")
            continue
        worst = min(worst, psnr(x, y))
        worst_y = min(worst_y, psnr_y(x.transpose(2, 0, 1)[None], y.transpose(2, 0, 1)[None]))
        count += 1
    if count == 0 and not problems:
        problems.append(f"{a_dir}: no images")
    return worst, worst_y, count, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--min-psnr", type=float, default=40.0, help="lowest acceptable RGB PSNR, dB")
    args = parser.parse_args(argv)
    worst, worst_y, count, problems = compare(args.a, args.b)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    print(f"PSNR min {worst:.2f} dB (Y {worst_y:.2f} dB) over {count} images")
    return 1 if problems or worst < args.min_psnr else 0


if __name__ == "__main__":
    sys.exit(main())
