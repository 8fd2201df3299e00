"""Whole ``hrx upscale`` commands against a lean reference script, as processes, interleaved: one small photo,
one large photo (640x427 at x4) and a folder of small photos, with the bundled default-x4 and the default
engine (OpenVINO on a CPU).

    python benchmarks/bench_startup.py --rounds 7          # on an idle machine: the RESULTS.md figures

Runners (every round runs each once per case, starting with the next runner each round):

* ``hrx-streams``: ``hrx upscale PHOTOS -o OUT`` as shipped (``CPU_PARALLELISM = "streams"``: one compiled
  model with a stream per core);
* ``hrx-sessions``: the same command with ``CPU_PARALLELISM = "sessions"`` (one compiled model per core,
  compiled at once), set by a two-line launcher both hrx runners share;
* ``reference``: what a user could write for the same job (``--reference``, this file): Pillow decode,
  the same ONNX file compiled once by OpenVINO with 2 streams and 2 infer requests in flight, in the
  precision hrx chose, the same tiles (``hrx.runtime.tiling``), PNG at zlib level 1.

Rows: the median wall time of each runner per case and its ratio to the reference's (also the median of
the per-round ratios), the time to hrx's first line on stderr, the reference's time inside the model
(first tile in to last tile out), and hrx's overhead: its wall time minus that model time. A first
untimed run of each runner fills the compiled-model and precision-gate caches (warm caches, as a user's
second run). ``HRX_BENCH_RESULTS_DIR=/tmp/x`` keeps a smoke run's JSON out of ``benchmarks/results``.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LAUNCHER = ("import sys\nimport hrx.runtime.openvino as ov\nov.CPU_PARALLELISM = sys.argv.pop(1)\n"
            "from hrx.cli.main import main\nsys.argv[0] = 'hrx'\nmain()\n")
CASES = ("small", "large", "folder")
RUNNERS = ("hrx-streams", "hrx-sessions", "reference")
BUNDLED_ONNX = Path(__file__).resolve().parent.parent / "hrx" / "weights" / "default-x4.onnx"


# -- the reference script ----------------------------------------------------------------------------------

def reference(precision: str, out_dir: Path, photos: list[Path]) -> None:
    """The lean script: prints ``model_s`` (seconds inside the model, summed over the photos)."""
    import queue
    from concurrent.futures import ThreadPoolExecutor

    import openvino as ov
    from PIL import Image

    from hrx.interface import ModelInfo
    from hrx.runtime.tiling import TileSpec, upscale_tiled

    info = ModelInfo.from_onnx(BUNDLED_ONNX)
    cache = Path(tempfile.gettempdir()) / "hrx-bench-startup-reference-cache"
    config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "NUM_STREAMS": "2",
              "CACHE_DIR": str(cache)}
    compiled = ov.Core().compile_model(str(BUNDLED_ONNX), "CPU", config)
    requests: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(2):
        request = compiled.create_infer_request()
        request.get_input_tensor(0).data  # pyopenvino's first .data on this thread, not on two at once
        requests.put(request)

    def infer(tiles: np.ndarray) -> np.ndarray:
        request = requests.get()
        try:
            request.infer({0: tiles})
            return request.get_output_tensor(0).data.copy()
        finally:
            requests.put(request)

    spec = TileSpec.from_info(info, None, "blend")
    model_s = 0.0
    with ThreadPoolExecutor(2) as pool:
        def infer_many(batches):
            pending = []
            for batch in batches:
                pending.append(pool.submit(infer, np.ascontiguousarray(batch, dtype=np.float32)))
                if len(pending) > 2:
                    yield pending.pop(0).result()
            for future in pending:
                yield future.result()

        for photo in photos:
            with Image.open(photo) as im:
                pixels = np.asarray(im.convert("RGB"), dtype=np.float32).transpose(2, 0, 1) / 255.0
            t0 = time.perf_counter()
            out = upscale_tiled(np.ascontiguousarray(pixels), infer, spec, infer_many=infer_many)
            model_s += time.perf_counter() - t0
            rgb = (np.clip(out, 0.0, 1.0).transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8)
            Image.fromarray(rgb).save(out_dir / f"{photo.stem}.png", compress_level=1)
    print(f"model_s {model_s:.6f}")


# -- the benchmark ------------------------------------------------------------------------------------------

def make_photos(root: Path, folder_count: int) -> dict[str, list[Path]]:
    """JPEGs from scikit-image's photos: one small (160x107), one large (640x427), ``folder_count`` small."""
    from PIL import Image
    from skimage import data

    sources = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    cases: dict[str, list[Path]] = {}
    large = Image.fromarray(data.coffee()).resize((640, 427), Image.Resampling.LANCZOS)
    (root / "large").mkdir()
    large.save(root / "large" / "large.jpg", quality=92)
    cases["large"] = [root / "large" / "large.jpg"]
    (root / "folder").mkdir()
    cases["folder"] = []
    for k in range(folder_count):
        src = sources[k % len(sources)]
        h, w = src.shape[:2]
        y, x = (37 * k) % (h - 214), (53 * k) % (w - 320)
        crop = Image.fromarray(src[y:y + 214, x:x + 320]).resize((160, 107), Image.Resampling.LANCZOS)
        crop.save(root / "folder" / f"p{k:02d}.jpg", quality=92)
        cases["folder"].append(root / "folder" / f"p{k:02d}.jpg")
    (root / "small").mkdir()
    small = Image.fromarray(sources[0][:214, :320]).resize((160, 107), Image.Resampling.LANCZOS)
    small.save(root / "small" / "small.jpg", quality=92)
    cases["small"] = [root / "small" / "small.jpg"]
    return cases


def command(runner: str, case_dir: Path, out: Path, precision: str) -> list[str]:
    if runner == "reference":
        return [sys.executable, __file__, "--reference", precision, str(out), *map(str, sorted(case_dir.iterdir()))]
    mode = runner.split("-", 1)[1]
    return [sys.executable, "-c", LAUNCHER, mode, "upscale", str(case_dir), "-o", str(out)]


def run_once(cmd: list[str], out: Path) -> dict:
    """One process: wall seconds, seconds to its first stderr line, and what it printed."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()
    first_s = time.perf_counter() - t0 if first else None
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[:4])}...: exit {proc.returncode}: {(first + stderr).strip()[-500:]}")
    return {"wall": wall, "first_line": first_s, "stdout": stdout, "stderr": first + stderr}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--reference"]:
        reference(argv[1], Path(argv[2]), [Path(p) for p in argv[3:]])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--runners", default=",".join(RUNNERS), help=f"comma-separated, of {', '.join(RUNNERS)}")
    ap.add_argument("--folder-count", type=int, default=20, help="small photos in the folder case")
    args = ap.parse_args(argv)
    cases, runners = args.cases.split(","), args.runners.split(",")
    if "reference" not in runners or set(cases) - set(CASES) or set(runners) - set(RUNNERS):
        ap.error(f"--cases from {CASES}; --runners from {RUNNERS}, the reference among them")

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from results import save

    rows = []
    with tempfile.TemporaryDirectory(prefix="hrx-bench-startup-") as tmp:
        root = Path(tmp)
        photos = make_photos(root, args.folder_count)
        warm = run_once(command("hrx-streams", root / "small", root / "out", ""), root / "out")
        line = warm["stderr"].splitlines()[0]
        precision = line.split()[1] if line.startswith("precision:") else "fp32"
        print(f"hrx chose: {line}")
        for case in cases:
            case_dir = root / case
            for runner in runners:  # untimed: compiled-model caches of each runner's configuration
                run_once(command(runner, case_dir, root / "out", precision), root / "out")
            times: dict[str, list[dict]] = {r: [] for r in runners}
            for r in range(args.rounds):
                for k in [(r + j) % len(runners) for j in range(len(runners))]:
                    out = root / f"out-{runners[k]}"
                    times[runners[k]].append(run_once(command(runners[k], case_dir, out, precision), out))
            rows += case_rows(case, photos[case], times)
    print(f"{args.rounds} interleaved rounds, whole processes; ratio: wall / the reference's wall (median)")
    print("| case | runner | wall s (median) | vs reference | per-round ratio (median) | first line s | model s | "
          "overhead s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join("-" if row[k] is None else (f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]))
                                for k in ("case", "runner", "wall_s", "vs_reference", "round_ratio", "first_line_s",
                                          "model_s", "overhead_s")) + " |")
    save("startup", rows, params={"rounds": args.rounds, "folder_count": args.folder_count, "precision": precision,
                                  "model": "bundled default-x4", "cases": cases, "runners": runners})
    return 0


def case_rows(case: str, photos: list[Path], times: dict[str, list[dict]]) -> list[dict]:
    ref = times["reference"]
    ref_wall = statistics.median(t["wall"] for t in ref)
    model_s = statistics.median(float(t["stdout"].split()[-1]) for t in ref)
    size = _size(photos[0])
    rows = []
    for runner, runs in times.items():
        wall = statistics.median(t["wall"] for t in runs)
        firsts = [t["first_line"] for t in runs if t["first_line"] is not None]
        hrx = runner != "reference"
        rows.append({"case": case, "photos": len(photos), "size": size, "runner": runner, "wall_s": wall,
                     "wall_min_s": min(t["wall"] for t in runs), "vs_reference": wall / ref_wall,
                     "round_ratio": statistics.median(t["wall"] / u["wall"] for t, u in zip(runs, ref)),
                     "first_line_s": statistics.median(firsts) if hrx and firsts else None,
                     "model_s": model_s, "overhead_s": wall - model_s})
    return rows


def _size(photo: Path) -> str:
    from PIL import Image

    with Image.open(photo) as im:
        return f"{im.width}x{im.height}"


if __name__ == "__main__":
    sys.exit(main())
