"""hrx upscale (its default CPU path; ONNX Runtime FP32 and INT8) vs the ways people run third-party models today, in one run.

    python benchmarks/bench_peers.py                           # RRDBNet, SRVGGNetCompact, SPAN at x4
    python benchmarks/bench_peers.py --arch SPAN --size 256 --repeats 5

Same weights (spandrel's own classes at their published sizes, perturbed, see ``tests/zoo.py``)
and the same photo (a crop of scikit-image's astronaut) for every path:

* ``realesrgan-tiled``: PyTorch eager with Real-ESRGAN's ``RealESRGANer`` logic, re-implemented from its
  description: ``pre_pad`` reflection at the bottom / right, tiles of ``--peer-tile`` with ``tile_pad``
  context on every side, each tile's output cropped to its own area, pre_pad cropped off at the end.
* ``spandrel-whole``: spandrel's ``ImageModelDescriptor`` called on the whole image under
  ``torch.inference_mode`` in FP32, as chaiNNer runs a model on the CPU when the image fits in memory
  (its auto-split only tiles after an out-of-memory error). Its output is the reference for PSNR.
* ``hrx-default``: what ``hrx upscale --engine model.onnx`` runs with no backend named: the backend and
  precision :func:`hrx.runtime.factory.open_backend` picks by default (OpenVINO on CPUs where it is
  installed), named in the row;
* ``hrx-fp32`` / ``hrx-int8``: ``--backend onnxrt-cpu``: ``hrx export`` (fused, static tile, the
  architecture's overlap), ``hrx calibrate --target cpu`` on the other bundled photos for INT8, then the
  tiled runtime (blend merge) on ONNX Runtime CPU.

All paths use every thread of the machine (torch.set_num_threads / ORT intra-op threads = cores).
Timing: ``--repeats`` rounds, each round runs every path once in turn (interleaved), median per path.
Reports MP/s (input megapixels per second), hrx's speed ratio over each PyTorch path, and PSNR (8-bit)
of every output against the whole-image PyTorch result. Goal: hrx >= 1.5x with PSNR >= 45 dB.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hrx.metrics import psnr_8bit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # zoo: spandrel networks with perturbed weights

ARCHS = ("RRDBNet", "SRVGGNetCompact", "SPAN")
# photo side, hrx tile, Real-ESRGAN tile per architecture: photo = 2 * tile - overlap(32), so hrx runs exactly
# 2 x 2 tiles and Real-ESRGAN's tiling 2 x 2 tiles too (similar padded work: 1.3x-1.8x the photo's pixels).
# RRDBNet (16.7M parameters, ~18 MMAC per input pixel) gets the small setting to fit on this 2-core machine.
PRESETS = {"RRDBNet": (96, 64, 64), "SRVGGNetCompact": (224, 128, 128), "SPAN": (224, 128, 128)}


def photo(size: int) -> np.ndarray:
    from PIL import Image

    from hrx.data import skimage_photos

    path = {r.name: r.path for r in skimage_photos()}["astronaut"]
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return np.ascontiguousarray(arr[40:40 + size, 120:120 + size].transpose(2, 0, 1))


def openvino_note() -> str:
    from hrx.runtime.openvino import openvino_problem, openvino_version

    return openvino_problem() or f"openvino {openvino_version()}"


def realesrgan_tiled(net, img, scale: int, tile: int, tile_pad: int = 10, pre_pad: int = 10) -> np.ndarray:
    """RealESRGANer.pre_process + tile_process + post_process (Real-ESRGAN's inference), re-implemented."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(img)[None]
    if pre_pad:
        x = F.pad(x, (0, pre_pad, 0, pre_pad), mode="reflect")
    _, c, h, w = x.shape
    out = torch.zeros(1, c, h * scale, w * scale)
    tiles_x, tiles_y = math.ceil(w / tile), math.ceil(h / tile)
    with torch.inference_mode():
        for ty in range(tiles_y):
            for tx in range(tiles_x):
                x0, y0 = tx * tile, ty * tile
                x1, y1 = min(x0 + tile, w), min(y0 + tile, h)
                px0, py0 = max(x0 - tile_pad, 0), max(y0 - tile_pad, 0)
                px1, py1 = min(x1 + tile_pad, w), min(y1 + tile_pad, h)
                result = net(x[:, :, py0:py1, px0:px1])
                oy, ox = (y0 - py0) * scale, (x0 - px0) * scale
                out[:, :, y0 * scale:y1 * scale, x0 * scale:x1 * scale] = \
                    result[:, :, oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
    out = out[:, :, : (h - pre_pad) * scale, : (w - pre_pad) * scale]
    return out.clamp_(0, 1)[0].numpy()


def spandrel_whole(descriptor, img) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return descriptor(torch.from_numpy(img)[None])[0].numpy()  # spandrel pads / clamps itself


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", choices=ARCHS)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--size", type=int, default=None, help="photo side (input pixels; default per architecture)")
    ap.add_argument("--tile", type=int, default=None, help="hrx export tile (default per architecture)")
    ap.add_argument("--overlap", type=int, default=None, help="hrx overlap (default: the architecture's)")
    ap.add_argument("--peer-tile", type=int, default=None, help="Real-ESRGAN-style tile (tile_pad 10, pre_pad 10)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--model-size", choices=("real", "tiny"), default="real")
    args = ap.parse_args()

    import torch

    import hrx
    from hrx.calibration.pipeline import CalibrateOptions, calibrate
    from hrx.data import skimage_photos
    from hrx.export.onnx_export import export_onnx
    from hrx.runtime.factory import BackendRequest, open_backend
    from hrx.runtime.onnxrt import OnnxRuntimeBackend
    from hrx.runtime.tiling import TileSpec, upscale_tiled
    import zoo
    from hrx.spandrel_models.spandrel_import import import_spandrel
    from results import header

    torch.set_num_threads(args.threads)
    sp = import_spandrel()
    work = Path(tempfile.mkdtemp(prefix="hrx-peers-"))
    calib = work / "photos"
    calib.mkdir()
    for rec in skimage_photos():
        if rec.name != "astronaut":  # the benchmark photo is never a calibration image
            shutil.copy(rec.path, calib / Path(rec.path).name)
    print(f"command: python benchmarks/bench_peers.py {' '.join(sys.argv[1:])}")
    print(f"x{args.scale}, {args.threads} threads, torch {torch.__version__}, onnxruntime "
          f"{__import__('onnxruntime').__version__}, {openvino_note()}, {args.repeats} interleaved rounds, median\n")
    print(*header(["model", "params", "photo", "path", "tile / overlap", "MP/s", "hrx speed-up",
                   "PSNR vs whole-image PyTorch"]), sep="\n")
    rows = []
    try:
        for name in args.arch or ARCHS:
            size, tile, peer_tile = PRESETS[name]
            size, tile, peer_tile = args.size or size, args.tile or tile, args.peer_tile or peer_tile
            img = photo(size)
            mp = img.shape[1] * img.shape[2] / 1e6
            net = zoo.build(name, args.scale, size=args.model_size)
            ckpt = work / f"{name}.pth"
            zoo.save(net, ckpt)
            descriptor = sp.ModelLoader().load_from_state_dict(torch.load(ckpt, weights_only=True)).eval()
            model = hrx.load_model(ckpt)
            onnx_fp32 = work / f"{name}.onnx"
            info = export_onnx(ckpt, onnx_fp32, tile=tile).info
            onnx_int8 = work / f"{name}.int8.onnx"
            calibrate(CalibrateOptions(model=onnx_fp32, output=onnx_int8, images=calib, target="cpu", samples=16,
                                       eval_tiles=8, force=True, fallback=False))
            overlap = info.tile_overlap if args.overlap is None else args.overlap
            spec = TileSpec(info.tile, overlap, info.scale, info.size_multiple, info.batch, "blend")
            backends = {k: OnnxRuntimeBackend(p, "cpu", args.threads) for k, p in
                        (("hrx-fp32", onnx_fp32), ("hrx-int8", onnx_int8))}
            backends["hrx-default"] = open_backend(BackendRequest(engine=onnx_fp32, threads=args.threads))
            default = f"{backends['hrx-default'].name} {getattr(backends['hrx-default'], 'precision', 'fp32')}"
            paths = {
                "realesrgan-tiled": lambda: realesrgan_tiled(descriptor.model, img, args.scale, peer_tile),
                "spandrel-whole": lambda: spandrel_whole(descriptor, img),
                "hrx-default": lambda: upscale_tiled(img, backends["hrx-default"].infer, spec),
                "hrx-fp32": lambda: upscale_tiled(img, backends["hrx-fp32"].infer, spec),
                "hrx-int8": lambda: upscale_tiled(img, backends["hrx-int8"].infer, spec),
            }
            times: dict[str, list[float]] = {k: [] for k in paths}
            outs: dict[str, np.ndarray] = {}
            for k, fn in paths.items():  # warm-up (also the outputs compared)
                outs[k] = fn()
            for _ in range(args.repeats):
                for k, fn in paths.items():
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            ref = outs["spandrel-whole"]
            params = sum(p.numel() for p in model.parameters())
            tiles = {"realesrgan-tiled": f"{peer_tile} / pad 10", "spandrel-whole": "whole image",
                     "hrx-default": f"{spec.tile} / {overlap}", "hrx-fp32": f"{spec.tile} / {overlap}",
                     "hrx-int8": f"{spec.tile} / {overlap}"}
            for k in paths:
                speed = "" if not k.startswith("hrx") else \
                    f"{med['realesrgan-tiled'] / med[k]:.2f}x vs tiled, {med['spandrel-whole'] / med[k]:.2f}x vs whole"
                q = psnr_8bit(outs[k], ref)
                label = f"hrx-default ({default})" if k == "hrx-default" else k
                print(f"| {name} x{args.scale} | {params:,} | {size}x{size} | {label} | {tiles[k]} | {mp / med[k]:.4f} | {speed} | "
                      f"{'ref' if k == 'spandrel-whole' else f'{q:.1f} dB'} |", flush=True)
                rows.append({"model": f"{name} x{args.scale}", "params": params, "photo": f"{size}x{size}", "path": k,
                             "tile_overlap": tiles[k], "mp_per_s": mp / med[k],
                             "speed_vs_tiled": med["realesrgan-tiled"] / med[k] if k.startswith("hrx") else None,
                             "speed_vs_whole": med["spandrel-whole"] / med[k] if k.startswith("hrx") else None,
                             "psnr_vs_whole_db": None if k == "spandrel-whole" else q})
            for b in backends.values():
                b.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from results import save

    save("peers", rows, params={"scale": args.scale, "threads": args.threads, "repeats": args.repeats,
                                "model_size": args.model_size})


if __name__ == "__main__":
    main()
