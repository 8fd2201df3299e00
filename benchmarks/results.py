"""Benchmark results that cannot drift from the machine that produced them.

Every script in ``benchmarks/`` ends with ``save(NAME, rows, params=...)``: it writes
``benchmarks/results/NAME.json`` with the rows and a stamp (CPU model and its SIMD flags, logical
cores, threads used, python / torch / onnxruntime / openvino versions, git commit, UTC date).

    python benchmarks/results.py        # regenerate benchmarks/RESULTS.md from benchmarks/results/*.json

``RESULTS.md`` holds one section per JSON file: the command line that produced it, its stamp and a
table of its rows. The docs quote that file instead of copying figures by hand.
``HRX_BENCH_RESULTS_DIR`` writes the JSON elsewhere (smoke runs with tiny settings).
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
# CPU flags that decide which kernels ONNX Runtime / OpenVINO / oneDNN can use
FLAG_PATTERN = re.compile(r"^(amx\w*|avx512\w*|avx_vnni\w*|avx2|fma|f16c)$")
VERSIONED = ("torch", "onnxruntime", "openvino")


def results_dir() -> Path:
    return Path(os.environ.get("HRX_BENCH_RESULTS_DIR") or RESULTS_DIR)


def cpu() -> dict[str, Any]:
    """CPU model and the SIMD flags that matter for inference (Linux /proc/cpuinfo; elsewhere the platform's name)."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags = sorted(f for f in value.split() if FLAG_PATTERN.match(f))
            break
    return {"model": model, "flags": flags}


def threads_used(params: dict | None) -> int:
    """``params["threads"]`` when the script says; else torch's intra-op count when torch is loaded; else the CPUs
    this process may use."""
    if params and isinstance(params.get("threads"), int) and params["threads"] > 0:
        return params["threads"]
    if "torch" in sys.modules:
        return int(sys.modules["torch"].get_num_threads())
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def versions() -> dict[str, str]:
    """python and the runtimes that are importable here (read from their metadata, nothing is imported)."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        if importlib.util.find_spec(name) is None:
            continue
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = getattr(importlib.import_module(name), "__version__", "unknown")
    return out


def git_commit() -> str:
    """HEAD of the checkout the benchmark ran from, ``+dirty`` when tracked files differ; ``unknown`` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def stamp(params: dict | None = None) -> dict[str, Any]:
    return {
        "cpu": cpu(),
        "logical_cores": os.cpu_count(),
        "threads": threads_used(params),
        "versions": versions(),
        "commit": git_commit(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(["python", *[_relative(a) for a in sys.argv]]),
    }


def _relative(arg: str) -> str:
    try:
        return str(Path(arg).resolve().relative_to(REPO)) if arg.endswith(".py") else arg
    except ValueError:
        return arg


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if isinstance(value, float) and value != value:
        return None  # NaN is not JSON
    return value


def save(name: str, rows: list[dict], *, params: dict | None = None) -> Path:
    """Write ``RESULTS_DIR/NAME.json`` (rows, params, stamp) atomically and return its path."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"result name {name!r}: letters, digits, '_', '.', '-' only")
    doc = {"name": name, "stamp": stamp(params), "params": _jsonable(params or {}), "rows": _jsonable(list(rows))}
    path = results_dir() / f"{name}.json"
    from hrx.paths import atomic_write_bytes

    atomic_write_bytes(path, (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode())
    print(f"results: {path}", file=sys.stderr)
    return path


# -- RESULTS.md ---------------------------------------------------------------------------------------------

def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        value = json.dumps(value, separators=(", ", ": "))
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict]) -> list[str]:
    """A Markdown table of ``rows``; columns are the keys in order of first appearance."""
    if not rows:
        return ["(no rows)"]
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return header(cols) + ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]


def header(columns: Sequence[str]) -> list[str]:
    """The first two lines of a Markdown table: the column names and the separator under them."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def section(doc: dict) -> list[str]:
    s = doc["stamp"]
    flags = ", ".join(s["cpu"]["flags"]) or "none of " + FLAG_PATTERN.pattern
    vers = ", ".join(f"{k} {v}" for k, v in s["versions"].items())
    out = [f"## {doc['name']}", "", f"`{s['command']}`", "",
           f"- CPU: {s['cpu']['model']} ({s['logical_cores']} logical cores, {s['threads']} threads used); flags: {flags}",
           f"- versions: {vers}",
           f"- commit {s['commit']}, {s['date']}"]
    if doc.get("params"):
        out.append("- params: " + ", ".join(f"{k}={_cell(v)}" for k, v in doc["params"].items()))
    return out + [""] + table(doc["rows"]) + [""]


def render(folder: Path | None = None) -> str:
    folder = folder or results_dir()
    docs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    out = ["# Benchmark results", "",
           "Generated by `python benchmarks/results.py` from `benchmarks/results/*.json`; every benchmark script",
           "writes its JSON with `save()` (`benchmarks/results.py`). Do not edit by hand.", ""]
    if not docs:
        out += ["No results recorded yet: run a script in `benchmarks/` (each prints its command in its docstring),",
                "then `python benchmarks/results.py`.", ""]
    for doc in docs:
        out += section(doc)
    return "\n".join(out)


def main() -> int:
    from hrx.paths import atomic_write_bytes

    atomic_write_bytes(RESULTS_MD, render(RESULTS_DIR).encode())
    print(f"wrote {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
