"""Does the test suite catch realistic bugs in the data path? Named one-line mutations, each run against
the tests that claim to guard that code.

    python scripts/mutation_check.py               # every mutation (minutes: on demand, not in CI)
    python scripts/mutation_check.py -k tiling     # the mutations whose name contains "tiling"
    python scripts/mutation_check.py --list        # names, files and tests, nothing run
    python scripts/mutation_check.py --no-save     # print the table only

Each mutation is a small source patch: its ``before`` text, found exactly once in the file (the suite's
tests/test_mutation_check.py holds that for the current source), replaced by ``after``. The tracked files
are copied once to a temporary folder laid out as the installed package (``hrx/`` with ``export/``,
``calibration/``, ``runtime/``, ``cli/`` inside) and put first on ``PYTHONPATH``; no bytecode is written, so
a patched file is always read from its text. First every distinct test selection runs on the unpatched copy
(it must pass, or a catch would mean nothing); then, per mutation: patch, run its tests (``pytest -x``),
restore. ``caught``: pytest failed; ``survived``: it passed; ``error``: pytest could not run them (counted
as not caught); ``timeout``: counted as caught (the mutation made the tests hang).

The table (mutation, file, result, seconds; detail: the first failing test, or pytest's last line) and the score go to
``benchmarks/results/mutation_check.json`` (``benchmarks/results.save``), rendered into
``benchmarks/RESULTS.md`` by ``python benchmarks/results.py``.

Why not mutmut: it generates every operator swap in the files it is given and maps tests to functions from
a first run of the whole suite (12+ minutes on two cores) before any mutant runs; its mutants are
syntactic (``+`` -> ``-``, string edits), most of them equivalent or in error messages, and its report
names line numbers that move with every edit. Here the mutations are bugs worth catching, named, with the
tests that should catch them, and the whole check runs in minutes on two cores.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("export", "calibration", "runtime", "cli")  # installed as hrx.<name> (pyproject package-dir)
TIMEOUT_S = 600


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # repository-relative
    before: str  # found exactly once in the file
    after: str
    tests: tuple[str, ...]  # pytest arguments: files, node ids, -k expressions

    def apply(self, text: str) -> str:
        if text.count(self.before) != 1:
            raise ValueError(f"{self.name}: {self.path} holds its 'before' text {text.count(self.before)} times, not once")
        return text.replace(self.before, self.after)


TILING = ("tests/test_runtime_tiling.py", "-k", "not hrx_t")
REPORT = ("tests/test_reliability.py", "-k", "fsynced or ctrl_c")
ATOMIC = ("tests/test_runtime_images.py", "-k", "atomic")
IMAGES = ("tests/test_runtime_images.py",)
POLICY = ("tests/test_precision_policy.py", "-k", "cpu_flags or auto_without or recorded_numbers or impossible")
CALIBRATE = ("tests/test_calibrate.py", "-k", "own_threshold")
MOE = ("tests/test_blocks.py", "-k", "moe")
FUSE = ("tests/test_blocks.py", "-k", "fuse")
VIDEO_PTS = ("tests/test_video.py", "-k", "input_pts or streams_timestamps or another_time_base")

MUTATIONS: tuple[Mutation, ...] = (
    # tiles
    Mutation("tiling-flat-blend-weights", "runtime/tiling.py",
             "    return np.cos(t * np.pi / 2) ** 2\n", "    return np.full(n, 0.5)\n", TILING),
    Mutation("tiling-linear-blend-weights", "runtime/tiling.py",
             "    return np.cos(t * np.pi / 2) ** 2\n", "    return 1.0 - t\n", TILING),
    Mutation("tiling-stride-ignores-overlap", "runtime/tiling.py",
             "        return (self.tile - self.overlap) // m * m\n", "        return self.tile // m * m\n", TILING),
    Mutation("tiling-no-last-tile", "runtime/tiling.py",
             "    starts = list(range(0, last, spec.stride)) + [last]\n",
             "    starts = list(range(0, last, spec.stride)) or [0]\n", TILING),
    Mutation("tiling-crop-at-tile-edge", "runtime/tiling.py",
             "            lo = (o0 + prev_end) // 2 if prev_end is not None else o0\n", "            lo = o0\n", TILING),
    Mutation("tiling-edge-padding", "runtime/tiling.py",
             '    return np.pad(image, pad, mode="reflect")\n', '    return np.pad(image, pad, mode="edge")\n', TILING),
    Mutation("tiling-fade-over-whole-overlap", "runtime/tiling.py",
             "            q = width // 4\n            ramp = width - 2 * q\n            w[:q] = 0.0\n",
             "            q = 0\n            ramp = width - 2 * q\n            w[:q] = 0.0\n", TILING),
    # image files and reports
    Mutation("report-row-not-fsynced", "runtime/report.py",
             "            os.fsync(self._fd)\n", "            pass\n", REPORT),
    Mutation("atomic-write-no-file-fsync", "hrx/paths.py",
             "        write(str(tmp))\n        _fsync(tmp, os.O_RDWR)\n", "        write(str(tmp))\n", ATOMIC),
    Mutation("atomic-write-no-folder-fsync", "hrx/paths.py",
             "        _fsync(path.parent, os.O_RDONLY)\n    return path\n", "        pass\n    return path\n", ATOMIC),
    Mutation("images-truncate-not-round", "runtime/images.py",
             "        part += np.float32(0.5)\n", "        part += np.float32(0.0)\n", IMAGES),
    Mutation("images-16-bit-scale-65536", "runtime/images.py",
             "    top = np.float32(65535.0 if bits == 16 else 255.0)\n",
             "    top = np.float32(65536.0 if bits == 16 else 255.0)\n", IMAGES),
    # precision on the CPU
    Mutation("openvino-hint-for-bf16-only", "runtime/openvino.py",
             '        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": HINTS[precision], "NUM_STREAMS": str(streams)}\n',
             '        config: dict[str, object] = {"NUM_STREAMS": str(streams)}\n'
             '        if precision == "bf16":\n            config["INFERENCE_PRECISION_HINT"] = HINTS[precision]\n',
             ("tests/test_runtime_openvino.py", "-k", "pinned or spandrel")),
    Mutation("policy-bf16-needs-both-flags", "hrx/cpu.py",
             "    return any(f in flags for f in BF16_FLAGS)\n", "    return all(f in flags for f in BF16_FLAGS)\n", POLICY),
    Mutation("policy-gate-mse-not-averaged", "runtime/precision_policy.py",
             "    return GateResult(psnr_from_mse(sq / n), tiles, source)\n",
             "    return GateResult(psnr_from_mse(sq), tiles, source)\n", POLICY),
    Mutation("policy-deep-output-ignored", "runtime/precision_policy.py",
             "    if deep_output:\n", "    if False:\n", POLICY),
    Mutation("policy-gate-threshold-inverted", "runtime/precision_policy.py",
             "        return self.psnr >= min_psnr\n", "        return self.psnr <= min_psnr\n", POLICY),
    Mutation("metrics-psnr-20-log10", "hrx/metrics.py",
             "10.0 * math.log10(peak**2 / mse)", "20.0 * math.log10(peak**2 / mse)", POLICY),
    # INT8 calibration
    Mutation("calibrate-few-image-gate-uses-max-drop", "calibration/pipeline.py",
             "    threshold = report.threshold\n", "    threshold = opts.max_drop\n", CALIBRATE),
    Mutation("calibrate-summary-verdict-uses-max-drop", "calibration/report.py",
             'verdict = "PASS" if a.quality.passed(report.threshold)', 'verdict = "PASS" if a.quality.passed(report.max_drop)',
             CALIBRATE),
    Mutation("calibrate-few-image-margin-1", "calibration/pipeline.py",
             "FEW_IMAGE_MARGIN = 3.0", "FEW_IMAGE_MARGIN = 1.0", CALIBRATE),
    Mutation("calibrate-drop-sign", "calibration/quality.py",
             "        return self.psnr_fp32 - self.psnr_int8\n", "        return self.psnr_int8 - self.psnr_fp32\n", CALIBRATE),
    # the model: fusion and routing
    Mutation("moe-top1-argmin", "hrx/blocks/moe.py",
             "    idx = torch.argmax(logits, dim=1, keepdim=True)", "    idx = torch.argmin(logits, dim=1, keepdim=True)", MOE),
    Mutation("moe-top1-gate-without-probability", "hrx/blocks/moe.py",
             "    gate = (e == idx).to(probs.dtype) * probs  # [B, E, H, W]\n",
             "    gate = (e == idx).to(probs.dtype)  # [B, E, H, W]\n", MOE),
    Mutation("fuse-bn-mean-ignored", "hrx/blocks/fusion.py",
             "bn.bias + (b - bn.running_mean) * g", "bn.bias + b * g", FUSE),
    Mutation("fuse-bn-variance-not-square-rooted", "hrx/blocks/fusion.py",
             "    std = torch.sqrt(bn.running_var + bn.eps)\n", "    std = bn.running_var + bn.eps\n", FUSE),
    # video
    Mutation("video-encoder-pts-frame-index", "runtime/video/codec.py",
             "                frame.pts, frame.time_base = pts, plan.time_base\n",
             "                frame.pts, frame.time_base = written.frames, plan.time_base\n", VIDEO_PTS),
    Mutation("video-join-drops-exact-pts", "runtime/video/mux.py",
             "                packet.pts, packet.dts, packet.duration = pts, dts, duration\n", "                pass\n",
             VIDEO_PTS),
)


# -- the copy ------------------------------------------------------------------------------------------------

def make_copy(root: Path) -> tuple[Path, dict[str, str]]:
    """The tracked files (as they are on disk) under ``root/repo``, and ``root/site/hrx`` laid out as the
    installed package. Returns the repository copy and the environment to run its tests in."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    repo = root / "repo"
    for name in filter(None, files.split("\0")):
        src = REPO / name
        if src.is_file():
            dst = repo / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    for sub in SUBPACKAGES:
        os.symlink(repo / sub, repo / "hrx" / sub)
    (root / "site").mkdir()
    os.symlink(repo / "hrx", root / "site" / "hrx")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "site"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PYTHONDONTWRITEBYTECODE": "1"}
    probe = subprocess.run([sys.executable, "-c", "import hrx.runtime.tiling as t; print(t.__file__)"], cwd=repo, env=env,
                           capture_output=True, text=True)
    if probe.returncode != 0 or not probe.stdout.strip().startswith(str(root)):
        raise SystemExit(f"the copy is not the package Python imports: {probe.stdout.strip() or probe.stderr.strip()}")
    return repo, env


def run_tests(repo: Path, env: dict[str, str], tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """``(outcome, seconds, first failing test)``; outcome ``passed``, ``failed``, ``error`` or ``timeout``."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    try:
        run = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, ""
    seconds = time.perf_counter() - t0
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", run.stdout, re.M)
    outcome = {0: "passed", 1: "failed"}.get(run.returncode, "error")
    detail = failed.group(1) if failed else (run.stdout.strip().splitlines() or [""])[-1]
    return outcome, seconds, detail


RESULT = {"failed": "caught", "timeout": "timeout", "passed": "survived", "error": "error"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-k", dest="select", default="", help="only the mutations whose name contains this")
    ap.add_argument("--list", action="store_true", help="list the mutations and their tests, run nothing")
    ap.add_argument("--no-save", action="store_true", help="print the table only (no JSON)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unpatched run of each test selection")
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per pytest run")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if args.select in m.name]
    if not chosen:
        raise SystemExit(f"no mutation name contains {args.select!r}")
    if args.list:
        for m in chosen:
            print(f"{m.name:42} {m.path:28} {' '.join(m.tests)}")
        return 0
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hrx-mutation-") as tmp:
        repo, env = make_copy(Path(tmp))
        if not args.no_baseline:
            for tests in dict.fromkeys(m.tests for m in chosen):
                outcome, seconds, detail = run_tests(repo, env, tests, args.timeout)
                print(f"baseline {' '.join(tests)}: {outcome} ({seconds:.1f} s)", flush=True)
                if outcome != "passed":
                    raise SystemExit(f"the unpatched tests do not pass ({detail}): fix them before measuring catches")
        rows = []
        for m in chosen:
            path = repo / m.path
            original = path.read_text()
            path.write_text(m.apply(original))
            try:
                outcome, seconds, detail = run_tests(repo, env, m.tests, args.timeout)
            finally:
                path.write_text(original)
            result = RESULT[outcome]
            rows.append({"mutation": m.name, "file": m.path, "result": result, "seconds": round(seconds, 1),
                         "detail": detail})
            print(f"{m.name:42} {result:8} {seconds:6.1f} s  {detail}", flush=True)
    caught = [r for r in rows if r["result"] in ("caught", "timeout")]
    survivors = [r["mutation"] for r in rows if r not in caught]
    score = 100.0 * len(caught) / len(rows)
    print(f"caught {len(caught)} of {len(rows)} ({score:.1f}%) in {time.perf_counter() - t_start:.0f} s; "
          f"survived: {', '.join(survivors) or 'none'}")
    if not args.no_save:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from results import save

        save("mutation_check", rows, params={"select": args.select or "all", "mutations": len(rows),
                                             "caught": len(caught), "score_percent": round(score, 1),
                                             "survived": survivors})
    return 0


if __name__ == "__main__":
    sys.exit(main())
