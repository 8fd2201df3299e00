"""benchmarks/results.py: every benchmark's rows land in a stamped JSON, and benchmarks/RESULTS.md is exactly
what ``python benchmarks/results.py`` generates from those files (it cannot drift from them)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import results  # noqa: E402


@pytest.fixture
def out_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HRX_BENCH_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path / "results"


def test_save_stamps_and_keeps_the_rows(out_dir):
    rows = [{"runtime": "ort", "ms": np.float32(1.5), "ok": True}, {"runtime": "torch", "ms": 3.0, "extra": float("nan")}]
    path = results.save("unit", rows, params={"threads": 3, "tile": 64, "onnx": Path("a/b.onnx")})
    assert path == out_dir / "unit.json"
    doc = json.loads(path.read_text())
    s = doc["stamp"]
    assert s["threads"] == 3 and s["logical_cores"] == os.cpu_count()
    assert s["cpu"]["model"] and all(results.FLAG_PATTERN.match(f) for f in s["cpu"]["flags"])
    if Path("/proc/cpuinfo").exists():
        flags = set(Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split())
        assert ("avx2" in flags) == ("avx2" in s["cpu"]["flags"])
    assert s["versions"]["python"].count(".") == 2 and "onnxruntime" in s["versions"]
    assert len(s["commit"].split("+")[0]) == 40 and s["date"].endswith("Z")
    assert doc["rows"] == [{"runtime": "ort", "ms": 1.5, "ok": True}, {"runtime": "torch", "ms": 3.0, "extra": None}]
    assert doc["params"]["onnx"] == "a/b.onnx"
    with pytest.raises(ValueError):
        results.save("../escape", rows)
    assert [p.name for p in out_dir.iterdir()] == ["unit.json"]  # atomic: no temporary left


def test_render_has_one_section_per_json_with_its_table(out_dir):
    results.save("b_second", [{"x": 1}], params={"threads": 1})
    results.save("a_first", [{"k": "v|w", "n": 0.123456789}, {"k": "z", "m": [1, 2]}])
    text = results.render(out_dir)
    assert text.index("## a_first") < text.index("## b_second")
    assert "| k | n | m |" in text and "| v\\|w | 0.1235 | - |" in text and "| z | - | [1, 2] |" in text
    assert "threads used" in text and "commit " in text


def test_results_md_is_generated_from_the_json_files():
    assert (ROOT / "benchmarks" / "RESULTS.md").read_text() == results.render(results.RESULTS_DIR), \
        "benchmarks/RESULTS.md is out of date: run python benchmarks/results.py"


def test_every_benchmark_script_saves_its_rows():
    scripts = sorted(p for p in (ROOT / "benchmarks").glob("*.py") if p.name != "results.py")
    assert scripts
    missing = [p.name for p in scripts if not re.search(r"^\s*from results import [\w, ]*\bsave\b", p.read_text(), re.M)]
    assert not missing, f"benchmark scripts that do not record their rows with results.save: {missing}"


def test_a_benchmark_run_writes_its_json(out_dir, tmp_path):
    """bench_ort_compare on a toy ONNX file (one round, one tile): the JSON holds what it printed."""
    import onnx

    from runtime_support import toy_model

    toy = tmp_path / "toy.onnx"
    onnx.save(toy_model(tile=32), str(toy))
    env = {**os.environ, "HRX_BENCH_RESULTS_DIR": str(out_dir)}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_ort_compare.py"), str(toy),
                          f"{toy},-NhwcTransformer", "--rounds", "1", "--tiles", "1", "--threads", "1"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    doc = json.loads((out_dir / "ort_compare.json").read_text())
    assert [r["spec"] for r in doc["rows"]] == [str(toy), f"{toy},-NhwcTransformer"]
    assert doc["rows"][0]["speed_vs_first"] == 1.0 and doc["rows"][1]["max_abs_diff_vs_first"] < 1e-5
    assert doc["stamp"]["threads"] == 1 and doc["params"]["tile"] == 32
    assert "bench_ort_compare.py" in doc["stamp"]["command"]
