"""Support table of third-party architectures (spandrel) through the hrx toolchain; prints Markdown.

    python benchmarks/spandrel_support.py                  # all architectures, x2 and x4, tiny configs
    python benchmarks/spandrel_support.py --arch SPAN --size real --tile 64

Per (architecture, scale): build the network with spandrel's own class (perturbed weights, see
``tests/zoo.py``), save it as a plain ``.pth`` state dict, then through hrx:
``hrx.load_model`` (spandrel detection) -> ``export_onnx`` (fuse, static tile) -> ONNX Runtime CPU vs
spandrel's PyTorch model on 3 random tiles (max abs error) -> tiled (the exported tile and the
architecture's overlap, blend merge) vs whole-image PyTorch on a photo (PSNR; and at overlap 0, to show
the seams the overlap removes) -> ``hrx calibrate --target trt`` on scikit-image's bundled photos
(INT8 PSNR drop vs the photo ground truth, and INT8-vs-FP32 PSNR) -> TensorRT supported-op check of the
FP32 and INT8 graphs (the ONNX parser's operator table; no GPU here). Any step that fails is reported in
its cell with one line; the row goes on.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hrx.metrics import psnr_8bit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # zoo: spandrel networks with perturbed weights


def photo(h: int, w: int) -> np.ndarray:
    """A [3, h, w] float crop of scikit-image's astronaut (bundled, no download)."""
    from PIL import Image

    from hrx.data import skimage_photos

    path = {r.name: r.path for r in skimage_photos()}["astronaut"]
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return np.ascontiguousarray(arr[100:100 + h, 150:150 + w].transpose(2, 0, 1))


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:140]


def row(name: str, scale: int, size: str, tile: int, work: Path, calib_dir: Path, samples: int) -> dict:
    import onnxruntime as ort
    import torch

    import hrx
    from hrx.export.onnx_export import export_onnx
    from hrx.runtime.tiling import TileSpec, upscale_tiled
    import zoo

    r: dict = {"arch": name, "scale": scale}
    net = zoo.build(name, scale, size=size)
    ckpt = work / f"{name}_x{scale}.pth"
    zoo.save(net, ckpt)
    model = hrx.load_model(ckpt)
    r["spandrel"] = model.arch
    r["params"] = sum(p.numel() for p in model.parameters())
    r["req"] = (f"m{model.size_multiple}" + (f" min{model.min_size}" if model.min_size else "") +
                (" sq" if model.square else "") + ("" if model.fp16 else " no-fp16") + ("" if model.bf16 else " no-bf16"))
    r["fused"] = sum(type(m).__name__ == "FusedConv3XC" for m in hrx.fuse(model).modules())
    onnx_path = work / f"{name}_x{scale}.onnx"
    t0 = time.perf_counter()
    try:
        res = export_onnx(ckpt, onnx_path, tile=tile)
    except Exception as e:  # noqa: BLE001 - reported in the table
        r["export"] = f"FAIL: {one_line(e)}"
        return r
    r["export"] = f"ok ({time.perf_counter() - t0:.0f} s)"
    info = res.info
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    err = 0.0
    for seed in range(3):
        x = torch.rand(1, 3, tile, tile, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            ref = net(x).numpy()
        err = max(err, float(np.abs(sess.run(None, {"input": x.numpy()})[0] - ref).max()))
    r["ort_err"] = err
    img = photo(int(tile * 1.75), int(tile * 2.25))
    with torch.no_grad():
        whole = model(torch.from_numpy(img)[None])[0].numpy()

    def infer(tiles: np.ndarray) -> np.ndarray:
        return sess.run(None, {"input": tiles})[0]

    def tiled(overlap: int) -> np.ndarray:
        return upscale_tiled(img, infer, TileSpec(tile, overlap, scale, info.size_multiple, 1, "blend"))

    r["overlap"] = info.tile_overlap
    r["why"] = info.extra.get("overlap_rule", "")
    r["tiled_psnr"] = psnr_8bit(tiled(info.tile_overlap), whole)
    r["seam_psnr"] = psnr_8bit(tiled(0), whole)
    from hrx.calibration.pipeline import CalibrateOptions, calibrate
    from hrx.runtime.trt.ops import unsupported_ops

    r["trt"] = ", ".join(unsupported_ops(onnx_path)) or "all supported"
    try:
        rep = calibrate(CalibrateOptions(model=onnx_path, output=work / f"{name}_x{scale}.int8.onnx", images=calib_dir,
                                         target="trt", samples=samples, eval_tiles=8, force=True, fallback=False))
        q = rep.chosen.quality
        r["int8_drop"] = q.drop
        r["int8_vs_fp32"] = q.psnr_int8_vs_fp32
        bad = unsupported_ops(rep.output)
        if bad:
            r["trt"] += f"; INT8 graph: {', '.join(bad)}"
    except Exception as e:  # noqa: BLE001
        r["int8_drop"] = f"FAIL: {one_line(e)}"
    return r


def markdown(rows: list[dict], args) -> str:
    head = ("| architecture (spandrel id) | scale | params | export | ORT max abs err vs PyTorch | tile overlap (rule) | "
            "tiled vs whole PSNR (overlap 0) | INT8 PSNR drop (INT8 vs FP32) | TensorRT op check | notes |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if not str(r.get("export", "")).startswith("ok"):
            lines.append(f"| {r['arch']} ({r.get('spandrel', '?')}) | x{r['scale']} | {r.get('params', 0):,} | "
                         f"{r.get('export', '')} | | | | | | |")
            continue
        drop = r["int8_drop"]
        drop_s = drop if isinstance(drop, str) else f"{drop:+.2f} dB ({r['int8_vs_fp32']:.1f} dB)"
        notes = [r["req"]]
        if r["fused"]:
            notes.append(f"{r['fused']} Conv3XC fused")
        lines.append(f"| {r['arch']} ({r['spandrel']}) | x{r['scale']} | {r['params']:,} | {r['export']} | "
                     f"{r['ort_err']:.1e} | {r['overlap']} ({r['why']}) | {r['tiled_psnr']:.1f} dB ({r['seam_psnr']:.1f} dB) | "
                     f"{drop_s} | {r['trt']} | {'; '.join(notes)} |")
    return "\n".join(lines)


def main() -> None:
    import zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", action="append", choices=list(zoo.ZOO), help="repeatable; default: all")
    ap.add_argument("--scale", type=int, action="append", help="repeatable; default: every scale the arch has")
    ap.add_argument("--size", choices=("tiny", "real"), default="tiny")
    ap.add_argument("--tile", type=int, default=64)
    ap.add_argument("--samples", type=int, default=16, help="calibration tiles")
    args = ap.parse_args()
    import torch

    from hrx.data import skimage_photos

    torch.set_num_threads(max(1, torch.get_num_threads()))
    work = Path(tempfile.mkdtemp(prefix="hrx-support-"))
    calib = work / "photos"
    calib.mkdir()
    for rec in skimage_photos():
        shutil.copy(rec.path, calib / Path(rec.path).name)
    rows = []
    try:
        for name in args.arch or list(zoo.ZOO):
            for scale in args.scale or zoo.ZOO[name].scales:
                if scale not in zoo.ZOO[name].scales:
                    continue
                print(f"{name} x{scale} ...", file=sys.stderr, flush=True)
                try:
                    rows.append(row(name, scale, args.size, args.tile, work, calib, args.samples))
                except Exception as e:  # noqa: BLE001 - one line, the table goes on
                    rows.append({"arch": name, "scale": scale, "export": f"FAIL: {one_line(e)}"})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"command: python benchmarks/{Path(__file__).name} " + " ".join(sys.argv[1:]))
    print(markdown(rows, args))
    from results import save

    save("spandrel_support", rows, params={"size": args.size, "tile": args.tile, "samples": args.samples})


if __name__ == "__main__":
    main()
