"""CPU engines side by side in one run: ONNX Runtime, OpenVINO f32 / bf16 / INT8, PyTorch eager and torch.compile.

The figures (run on an idle machine, everything else stopped; an hour or more on 2 cores, RRDBNet,
RealPLKSR and torch.compile take most of it)::

    python benchmarks/bench_cpu_engines.py --rounds 7 --compile --e2e
    python benchmarks/bench_cpu_engines.py --rows int8 --model default-x2 --model compact-x4 --model span-x4 --rounds 7

A smoke run (< 1 minute)::

    python benchmarks/bench_cpu_engines.py --model compact-x4 --size tiny --tile 32 --rounds 1 --samples 8 \\
        --row ort-1xN --row ov-bf16-latency --row ov-int8-throughput --row torch-bf16 \\
        --e2e --e2e-model compact-x4 --e2e-photos 2 --e2e-side 128 --no-save

Prints the CPU model and its matrix / vector flags (AMX-BF16, AMX-INT8, AVX512-BF16, AVX512-FP16,
AVX512-VNNI), and says where there is no AMX (BF16 then runs on AVX512-BF16, INT8 on VNNI) or no BF16 at
all. All rows use every core the process may use (``--threads``) and the same photo tiles (crops of
scikit-image's astronaut, tile ``--tile``). Rows (``--row``, repeatable):

* ``ort-1xN`` / ``ort-Nx1``: ONNX Runtime FP32, one session of N threads / N one-thread sessions;
* ``default``: what ``hrx upscale --engine model.onnx`` runs with no backend or precision named
  (:func:`hrx.runtime.factory.resolve_request`: OpenVINO, ``--precision auto``), in the parallel mode of
  :data:`hrx.runtime.openvino.CPU_PARALLELISM`; the note says the precision it chose;
* ``ov-{f32,bf16,int8,int8bf16,int8trt,int8cpu}-{latency,throughput,Nx1}``: OpenVINO
  (:class:`hrx.runtime.openvino.OpenVINOBackend`): one stream of N threads (latency), N streams of one
  compiled model (throughput, tiles through its asynchronous queue), or N one-thread compiled models
  sharing the tiles (Nx1, :class:`hrx.runtime.pool.SharedSessions`, as ``hrx upscale --workers N``).
  ``int8`` is ``hrx calibrate --target openvino`` of the same export (bundled photos except the
  astronaut; ``--samples``) with f32 outside the INT8 convolutions (``--precision int8``), ``int8bf16``
  the same file with bf16 there, ``int8trt`` / ``int8cpu`` the ``--target trt`` / ``--target cpu`` files;
Default rows (``--rows default``): all but ``torch-compile`` and the rarer OpenVINO combinations
(:data:`ROW_SETS`); ``--rows int8``: the three INT8 formats on OpenVINO against its BF16 path.

* ``torch-fp32`` / ``torch-bf16``: PyTorch eager (the model as loaded: HRX's training-side model, spandrel's
  class), bf16 under ``torch.autocast`` with channels_last; ``torch-compile`` (``--compile``, minutes of
  compiling per model): inductor on the FP32 model.

Models (``--model``): the bundled ``default-x2`` / ``default-x4`` (trained), and spandrel's
SRVGGNetCompact, SPAN, RealPLKSR and RRDBNet at x4 at their published sizes (``--size real``; perturbed
weights, ``tests/zoo.py``); RRDBNet times one tile per thread per pass (fewer tiles than sessions would
leave the Nx1 rows' other sessions idle). Each row: ms per tile (median of ``--rounds``
interleaved rounds, each round runs every row once), the ratio to ORT FP32 single-session and to PyTorch
eager FP32 and to the ``default`` row, the PSNR (8-bit) of its output against ORT FP32 on the same tiles,
and the share of 8-bit output values more than one level away from ORT FP32's.

``--e2e``: ``hrx upscale`` of a folder of photos (``--e2e-photos`` bundled photos) with the ``--e2e-model``
export (default-x2), the default path (no backend named) against ``--backend onnxrt-cpu --precision fp32``, in input
MP/s per command (the process start and model load included), interleaved over ``--rounds``.

Results are saved with ``benchmarks/results.py`` (``--no-save`` to skip) as ``cpu_engines`` (``--rows int8``:
``cpu_engines_int8``; ``--name`` to choose).
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from hrx.metrics import psnr_8bit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

HRX_MODELS = {"default-x2": "default-x2", "default-x4": "default-x4"}
ZOO_MODELS = {"compact-x4": "SRVGGNetCompact", "span-x4": "SPAN", "realplksr-x4": "RealPLKSR", "rrdbnet-x4": "RRDBNet"}
MODELS = tuple(HRX_MODELS) + tuple(ZOO_MODELS)
ONE_TILE = ("rrdbnet-x4",)  # ~18 MMAC per input pixel: one tile per thread per pass is enough
# compute precision, and for INT8 which hrx calibrate --target wrote the file (int8: openvino)
OV_KINDS = ("f32", "bf16", "int8", "int8bf16", "int8trt", "int8cpu")
INT8_FILES = {"int8": ("openvino", "fp32"), "int8bf16": ("openvino", "bf16"), "int8trt": ("trt", "fp32"),
              "int8cpu": ("cpu", "fp32")}  # kind -> (--target, precision elsewhere)
OV_MODES = ("latency", "throughput", "Nx1")  # 1 stream of N threads, N streams, N one-thread compiled models
ROWS = ("ort-1xN", "ort-Nx1", "default") + tuple(f"ov-{k}-{m}" for k in OV_KINDS for m in OV_MODES) + \
    ("torch-fp32", "torch-bf16", "torch-compile")
DEFAULT_ROWS = ("ort-1xN", "ort-Nx1", "default", "ov-f32-latency", "ov-f32-Nx1", "ov-bf16-latency",
                "ov-bf16-throughput", "ov-bf16-Nx1", "ov-int8-latency", "ov-int8-throughput", "ov-int8-Nx1",
                "ov-int8bf16-latency", "torch-fp32", "torch-bf16")
# --rows int8: the INT8 formats on OpenVINO against its BF16 path (which --target runs fastest there)
ROW_SETS = {"default": DEFAULT_ROWS,
            "int8": ("ort-1xN", "ov-bf16-latency", "ov-bf16-Nx1") + tuple(
                f"ov-{k}-{m}" for k in ("int8", "int8trt", "int8cpu", "int8bf16") for m in ("latency", "Nx1"))}
CALIB_EXCLUDE = ("astronaut",)  # the benchmark photo
# pause before each timed pass: ONNX Runtime's and OpenVINO's worker threads spin for a while after a run,
# and a row timed right after another ran several times slower (PyTorch eager after ORT, tiny tiles: 6x)
SETTLE_S = 0.2


def describe_cpu(flags: frozenset[str]) -> list[str]:
    """The CPU line and what its flags mean for BF16 and INT8."""
    from results import cpu  # benchmarks/results.py

    from hrx.runtime.precision_policy import REPORTED_FLAGS, bf16_native

    have = [f for f in REPORTED_FLAGS if f in flags]
    lines = [f"CPU: {cpu()['model']}, {os.cpu_count()} logical cores; flags: "
             f"{', '.join(have) or 'none of ' + ', '.join(REPORTED_FLAGS)}"]
    if "amx_bf16" in flags:
        lines.append("AMX present: BF16 and INT8 matrix tiles")
    elif bf16_native(flags):
        lines.append("NO AMX on this CPU: BF16 runs on AVX512-BF16 (dot products), INT8 on "
                     + ("AVX512-VNNI" if "avx512_vnni" in flags else "AVX2 / AVX-512 without VNNI"))
    else:
        lines.append("NO AMX and NO AVX512-BF16 on this CPU: OpenVINO bf16 rows are emulated (expect no speed-up); "
                     "`--precision auto` picks FP32 here")
    return lines


def photo_tiles(tile: int, count: int, seed: int = 0) -> list[np.ndarray]:
    from skimage import data

    img = np.ascontiguousarray(data.astronaut().transpose(2, 0, 1), dtype=np.float32) / 255.0
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        y, x = rng.integers(0, img.shape[1] - tile + 1), rng.integers(0, img.shape[2] - tile + 1)
        out.append(np.ascontiguousarray(img[None, :, y:y + tile, x:x + tile]))
    return out


def finite(db: float) -> float | None:
    return None if math.isinf(db) else round(db, 2)


def off_by_more_than_one(a: np.ndarray, b: np.ndarray) -> float:
    """Share of 8-bit values of ``a`` more than one level away from ``b``'s (what a written file shows)."""
    a8 = np.round(np.clip(a, 0, 1) * 255)
    b8 = np.round(np.clip(b, 0, 1) * 255)
    return float(np.mean(np.abs(a8 - b8) > 1))


def psnr_text(db: float | None) -> str:
    return "identical (8-bit)" if db is None else f"{db:.1f} dB"


@dataclass
class Model:
    name: str
    onnx: Path
    torch: object  # nn.Module in eval mode, FP32
    scale: int


def build(name: str, size: str, tile: int, work: Path) -> Model:
    import torch

    import hrx
    from hrx.export.onnx_export import export_onnx

    out = work / f"{name}.onnx"
    if name in HRX_MODELS:
        from hrx.checkpoint import resolve_checkpoint

        source: object = HRX_MODELS[name]
        net = hrx.load_model(resolve_checkpoint(HRX_MODELS[name])).eval()
    else:
        import zoo  # tests/zoo.py
        net = zoo.build(ZOO_MODELS[name], 4, size=size).eval()
        source = work / f"{name}.pth"
        zoo.save(net, source)
    info = export_onnx(source, out, tile=tile).info
    torch.set_grad_enabled(False)
    return Model(name, out, net, info.scale)


def calibrate_int8(model: Model, target: str, work: Path, samples: int, threads: int) -> tuple[Path, str]:
    """``hrx calibrate --target target`` of the model's export on the bundled photos (all targets of one
    model share one ranges cache); returns the file and its gate's line."""
    from hrx.calibration.pipeline import CalibrateOptions, calibrate
    from hrx.data import skimage_photos

    photos = work / "photos"
    if not photos.is_dir():
        photos.mkdir()
        for r in skimage_photos():
            if r.name not in CALIB_EXCLUDE:
                shutil.copy(r.path, photos / f"{r.name}{Path(r.path).suffix}")
    out = work / f"{model.name}.int8-{target}.onnx"
    report = calibrate(CalibrateOptions(model=model.onnx, output=out, images=photos, target=target, samples=samples,
                                        eval_tiles=8, force=True, threads=threads,
                                        ranges=work / f"{model.name}.ranges.json"))
    q = report.chosen.quality
    return out, (f"{report.chosen.quant.step.name}, drop {q.drop:+.3f} dB, INT8 vs FP32 {q.psnr_int8_vs_fp32:.1f} dB"
                 f"{'' if report.passed else ' (FAILED the gate; timed anyway)'}")


Runner = Callable[[list[np.ndarray]], list[np.ndarray]]


def ort_runner(path: Path, threads: int, sessions: int) -> Runner:
    from hrx.runtime.onnxrt import OnnxRuntimeBackend
    from hrx.runtime.pool import SharedSessions

    if sessions == 1:
        backend = OnnxRuntimeBackend(path, "cpu", threads=threads)
        return lambda tiles: [backend.infer(t) for t in tiles]
    shared = SharedSessions([OnnxRuntimeBackend(path, "cpu", threads=1) for _ in range(sessions)])
    return lambda tiles: list(shared.infer_many(tiles))


def ov_runner(path: Path, precision: str, threads: int, mode: str) -> Runner:
    from hrx.runtime.openvino import OpenVINOBackend
    from hrx.runtime.pool import SharedSessions

    if mode == "Nx1":
        shared = SharedSessions([OpenVINOBackend(path, precision=precision, threads=1, cache=False)
                                 for _ in range(threads)])
        return lambda tiles: list(shared.infer_many(tiles))
    streams = 1 if mode == "latency" else threads
    backend = OpenVINOBackend(path, precision=precision, threads=threads, streams=streams, cache=False)
    if streams == 1:
        return lambda tiles: [backend.infer(t) for t in tiles]
    return lambda tiles: list(backend.infer_many(tiles))


def default_runner(path: Path, threads: int) -> tuple[Runner, str]:
    """What ``hrx upscale --engine path`` picks with no backend or precision named, and its precision line."""
    from hrx.runtime.factory import BackendRequest, resolve_request
    from hrx.runtime.openvino import CPU_PARALLELISM

    request, choice = resolve_request(BackendRequest(engine=path, threads=threads))
    line = choice.line if choice is not None else f"backend {request.backend}"
    if request.backend != "openvino":
        return ort_runner(path, 1, threads), f"{request.backend}, N x 1; {line}"
    mode = "Nx1" if CPU_PARALLELISM == "sessions" else "throughput"
    return ov_runner(path, request.precision, threads, mode), f"openvino {request.precision} {mode}; {line}"


def torch_runner(net, bf16: bool) -> Runner:
    import torch

    if bf16:
        net = net.to(memory_format=torch.channels_last)

    def run(tiles: list[np.ndarray]) -> list[np.ndarray]:
        outs = []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for t in tiles:
                x = torch.from_numpy(t)
                if bf16:
                    x = x.contiguous(memory_format=torch.channels_last)
                outs.append(net(x).float().numpy())
        return outs
    return run


def compile_runner(net, tile0: np.ndarray) -> tuple[Runner, float]:
    import torch
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = 1  # a pool of compile subprocesses beside the timed rows slows them all
    compiled = torch.compile(net, backend="inductor")
    run = torch_runner(compiled, False)
    t0 = time.perf_counter()
    run([tile0])
    return run, time.perf_counter() - t0


def measure(model: Model, rows: list[str], tiles: list[np.ndarray], rounds: int, threads: int, work: Path,
            samples: int, log) -> list[dict]:
    runners: dict[str, Runner] = {}
    notes: dict[str, str] = {}
    files: dict[str, Path] = {}  # --target -> INT8 file
    for row in rows:
        try:
            if row == "ort-1xN":
                runners[row] = ort_runner(model.onnx, threads, 1)
            elif row == "ort-Nx1":
                runners[row] = ort_runner(model.onnx, 1, threads)
            elif row == "default":
                runners[row], notes[row] = default_runner(model.onnx, threads)
            elif row.startswith("ov-"):
                _, kind, mode = row.split("-")
                path, precision = model.onnx, {"f32": "fp32", "bf16": "bf16"}.get(kind, "")
                if kind in INT8_FILES:
                    target, precision = INT8_FILES[kind]
                    if target not in files:
                        t0 = time.perf_counter()
                        files[target], gate = calibrate_int8(model, target, work, samples, threads)
                        log(f"{model.name} INT8 (hrx calibrate --target {target}): {gate}, "
                            f"calibrated in {time.perf_counter() - t0:.0f} s")
                    path = files[target]
                    notes[row] = f"--target {target}, {precision} elsewhere"
                runners[row] = ov_runner(path, precision, threads, mode)
            elif row == "torch-fp32":
                runners[row] = torch_runner(model.torch, False)
            elif row == "torch-bf16":
                runners[row] = torch_runner(model.torch, True)
            elif row == "torch-compile":
                runners[row], seconds = compile_runner(model.torch, tiles[0])
                notes[row] = f"compiled in {seconds:.0f} s"
        except Exception as e:  # noqa: BLE001 - one line, the other rows go on
            log(f"{model.name} {row}: FAIL {str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__}")
    outs = {row: run(tiles) for row, run in runners.items()}  # warm-up, and the outputs compared
    times: dict[str, list[float]] = {row: [] for row in runners}
    for _ in range(rounds):
        for row, run in runners.items():
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            run(tiles)
            times[row].append((time.perf_counter() - t0) / len(tiles))
    reference = outs.get("ort-1xN") or ort_runner(model.onnx, threads, 1)(tiles)
    ms = {row: statistics.median(t) * 1e3 for row, t in times.items()}
    results = []
    for row in runners:
        results.append({
            "model": model.name, "row": row, "tile": tiles[0].shape[-1], "tiles": len(tiles), "threads": threads,
            "ms_per_tile": round(ms[row], 2), "ms_min": round(min(times[row]) * 1e3, 2),
            "vs_ort_fp32": round(ms["ort-1xN"] / ms[row], 3) if "ort-1xN" in ms else None,
            "vs_torch_eager": round(ms["torch-fp32"] / ms[row], 3) if "torch-fp32" in ms else None,
            "vs_default": round(ms["default"] / ms[row], 3) if "default" in ms else None,
            "psnr_vs_fp32": finite(min(psnr_8bit(o, r) for o, r in zip(outs[row], reference))),  # None: identical
            "off_by_2_levels": round(float(np.mean([off_by_more_than_one(o, r) for o, r in zip(outs[row], reference)])), 6),
            "note": notes.get(row, ""),
        })
    return results


def error_line(text: str) -> str:
    """The informative line of a failed command's output (typer draws its usage errors in a box)."""
    lines = [line.strip(" \u2502\u256d\u256e\u2570\u256f\u2500") for line in text.splitlines()]
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.lower().startswith("error") or "no such option" in line.lower()]
    return ((errors or lines or ["?"])[-1])[:200]


def e2e(onnx_path: Path, photos: int, side: int, rounds: int, work: Path, log) -> list[dict]:
    """``hrx upscale`` of a folder: the default path against ``--backend onnxrt-cpu --precision fp32``."""
    from PIL import Image

    from hrx.data import skimage_photos

    folder = work / "e2e-in"
    folder.mkdir(exist_ok=True)
    pixels = 0
    for r in list(skimage_photos())[:photos]:
        with Image.open(r.path) as im:
            im = im.convert("RGB")
            if side:
                im = im.crop((0, 0, min(side, im.width), min(side, im.height)))
            pixels += im.width * im.height
            im.save(folder / f"{r.name}.png")
    hrx_cli = [sys.executable, "-m", "hrx.cli.main"]
    paths = {"default (no --backend)": [], "onnxrt-cpu fp32": ["--backend", "onnxrt-cpu", "--precision", "fp32"]}
    seconds: dict[str, list[float]] = {k: [] for k in paths}
    first_line: dict[str, str] = {}
    failed: dict[str, str] = {}
    for i in range(rounds + 1):  # the first round fills caches (compiled models) and is not counted
        for name, extra in paths.items():
            if name in failed:
                continue
            out = work / f"e2e-out-{i}-{len(seconds[name])}"
            t0 = time.perf_counter()
            p = subprocess.run(hrx_cli + ["upscale", str(folder), "-o", str(out), "--engine", str(onnx_path), *extra],
                               capture_output=True, text=True)
            dt = time.perf_counter() - t0
            shutil.rmtree(out, ignore_errors=True)
            if p.returncode != 0:
                failed[name] = error_line(p.stderr + p.stdout)
                log(f"e2e {name}: FAIL {failed[name]}")
                continue
            first_line.setdefault(name, (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or [""])[0][:200])
            if i:
                seconds[name].append(dt)
    rows = []
    for name in paths:
        if name in failed or not seconds[name]:
            rows.append({"model": onnx_path.stem, "row": f"e2e {name}", "note": failed.get(name, "no rounds")})
            continue
        med = statistics.median(seconds[name])
        rows.append({"model": onnx_path.stem, "row": f"e2e {name}", "mp_per_s": round(pixels / 1e6 / med, 4),
                     "seconds": round(med, 2), "photos": photos, "note": first_line.get(name, "")})
    return rows


def main() -> None:
    from hrx.runtime.pool import available_cores

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", choices=MODELS, help="repeatable; default: all")
    ap.add_argument("--row", action="append", choices=ROWS, help="repeatable; replaces --rows")
    ap.add_argument("--rows", choices=tuple(ROW_SETS), default="default", help="a set of rows")
    ap.add_argument("--compile", action="store_true", help="add the torch.compile row (minutes per model)")
    ap.add_argument("--size", choices=("real", "tiny"), default="real", help="spandrel models' size")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--tiles", type=int, default=4, help="tiles per timed pass (RRDBNet: one per thread)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="0: every core this process may use")
    ap.add_argument("--samples", type=int, default=32, help="INT8 calibration tiles")
    ap.add_argument("--e2e", action="store_true", help="also hrx upscale of a folder of photos")
    ap.add_argument("--e2e-model", choices=MODELS, default="default-x2", help="the export --e2e upscales with")
    ap.add_argument("--e2e-photos", type=int, default=6)
    ap.add_argument("--e2e-side", type=int, default=0, help="crop the --e2e photos to this side (0: whole photos)")
    ap.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/NAME.json")
    ap.add_argument("--name", default=None, help="results name (default: cpu_engines, cpu_engines_int8 with --rows int8)")
    args = ap.parse_args()

    import torch

    threads = args.threads or available_cores()
    torch.set_num_threads(threads)
    rows = list(args.row or ROW_SETS[args.rows])
    if args.compile and "torch-compile" not in rows:
        rows.append("torch-compile")
    from hrx.runtime.precision_policy import cpu_flags

    flags = cpu_flags()

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    import onnxruntime

    from hrx.runtime.openvino import openvino_version

    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}")
    for line in describe_cpu(flags):
        print(line)
    print(f"{threads} threads for every row; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"openvino {openvino_version()}; tile {args.tile}, {args.rounds} interleaved rounds, median\n")
    print("| model | row | ms / tile | vs ORT FP32 1xN | vs PyTorch eager FP32 | vs default | PSNR vs ORT FP32 | "
          "8-bit values > 1 level off | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    results: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="hrx-cpu-engines-"))
    # a cache of its own (compiled models, the BF16 gate's figures), so every run starts alike and the
    # user's cache is left alone; the e2e commands inherit it
    os.environ["HRX_CACHE_DIR"] = str(work / "cache")
    try:
        for name in args.model or MODELS:
            log(f"{name}: export ...")
            try:
                model = build(name, args.size, args.tile, work)
            except Exception as e:  # noqa: BLE001
                print(f"| {name} | export | FAIL: {str(e).strip().splitlines()[0][:140]} |||||", flush=True)
                continue
            # a heavy model times as few tiles as keep every session of the Nx1 rows busy (one each)
            tiles = photo_tiles(args.tile, threads if name in ONE_TILE else args.tiles)
            for r in measure(model, rows, tiles, args.rounds, threads, work, args.samples, log):
                results.append(r)
                ratio = lambda v: "" if v is None else f"{v:.2f}x"  # noqa: E731
                print(f"| {r['model']} | {r['row']} | {r['ms_per_tile']:.1f} | {ratio(r['vs_ort_fp32'])} | "
                      f"{ratio(r['vs_torch_eager'])} | {ratio(r['vs_default'])} | {psnr_text(r['psnr_vs_fp32'])} | "
                      f"{100 * r['off_by_2_levels']:.4f}% | {r['note']} |", flush=True)
        if args.e2e:
            model = work / f"{args.e2e_model}.onnx"
            if not model.exists():
                model = build(args.e2e_model, args.size, args.tile, work).onnx
            print("\n| model | hrx upscale | input MP/s | seconds per folder | first line |")
            print("|---|---|---|---|---|")
            for r in e2e(model, args.e2e_photos, args.e2e_side, args.rounds, work, log):
                results.append(r)
                print(f"| {r['model']} | {r['row']} | {r.get('mp_per_s', '')} | {r.get('seconds', '')} | {r['note']} |",
                      flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not args.no_save:
        from results import save  # benchmarks/results.py

        name = args.name or ("cpu_engines" if args.rows == "default" else f"cpu_engines_{args.rows}")
        save(name, results, params={**vars(args), "threads": threads})


if __name__ == "__main__":
    main()
