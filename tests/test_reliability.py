"""A batch never loses work: exceptions injected while reading, inferring and writing one image, on ONNX
Runtime and PyTorch, fail that image only; the JSON-lines report is valid line by line, after Ctrl-C
and after SIGKILL of the whole process, and resumes the batch; --debug shows the chained traceback."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import hrx
import hrx.runtime.pipeline as pipeline
from hrx.cli.main import app
from hrx.runtime.report import read_report
from runtime_support import write_toy

runner = CliRunner()
POISON = 77  # the 8-bit gray level of the image whose inference fails: every tile of it is this constant


def _images(folder: Path, n: int = 4) -> list[Path]:
    """``n`` small random images and one constant ``poison.png`` (third in name order)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):
        path = folder / f"img{k}.png"
        Image.fromarray(rng.integers(0, 256, (18, 26, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    Image.fromarray(np.full((18, 26, 3), POISON, np.uint8)).save(folder / "img1_poison.png")
    return sorted(paths + [folder / "img1_poison.png"])


def _is_poison(tiles: np.ndarray) -> bool:
    flat = np.asarray(tiles, np.float32).reshape(len(tiles), -1)
    return bool(np.any(np.all(np.abs(flat - POISON / 255) < 1e-6, axis=1)))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The CLI arguments of each backend: the toy ONNX model (ONNX Runtime, OpenVINO at f32) and an hrx-t
    checkpoint (PyTorch)."""
    tmp = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    ckpt = hrx.save_model(hrx.create_model("hrx-t", scale=2), tmp / "t.pt")
    threads = torch.get_num_threads()  # --threads sets PyTorch's process-wide pool: restored after the module
    toy = str(write_toy(tmp / "toy.onnx", tile=16, batch=2))
    yield {"ort": ["--engine", toy, "--workers", "1", "--backend", "onnxrt-cpu"],
           "openvino": ["--engine", toy, "--workers", "1", "--backend", "openvino", "--precision", "fp32"],
            "torch": ["--model", str(ckpt), "--tile", "32", "--threads", "1"]}
    torch.set_num_threads(threads)


def _inject(monkeypatch, stage: str, backend: str) -> str:
    """Make the poison image fail at ``stage``; returns the exception type the row must name."""
    if stage == "read":
        real = pipeline.read_image

        def read(path, *args, **kwargs):
            if "poison" in str(path):
                raise ValueError("codec exploded")  # what a decoder (Pillow, imagecodecs, tifffile) raises
            return real(path, *args, **kwargs)

        monkeypatch.setattr(pipeline, "read_image", read)
        return "ValueError"
    if stage == "infer":
        from hrx.runtime.onnxrt import OnnxRuntimeBackend
        from hrx.runtime.openvino import OpenVINOBackend
        from hrx.runtime.torch_backend import TorchBackend

        cls = {"ort": OnnxRuntimeBackend, "openvino": OpenVINOBackend, "torch": TorchBackend}[backend]
        for name in ("infer", "infer_many"):  # OpenVINO runs tile batches through infer_many
            real = getattr(cls, name)

            def poisoned(self, tiles, real=real, name=name):
                if name == "infer_many":
                    tiles = list(tiles)
                    if any(_is_poison(t) for t in tiles):
                        raise RuntimeError("Exception from src/inference: injected")
                elif _is_poison(tiles):
                    raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : injected")
                return real(self, tiles)

            monkeypatch.setattr(cls, name, poisoned)
        return "RuntimeError"
    real_write = pipeline.write_image

    def write(path, picture, *args, **kwargs):
        if "poison" in str(path):  # a codec error while encoding, after the temporary file was opened
            from hrx.paths import atomic_write

            def half(tmp):
                Path(tmp).write_bytes(b"\x89PNG half")
                raise KeyError("encoder state")

            atomic_write(path, half, *args[2:3])
        return real_write(path, picture, *args, **kwargs)

    monkeypatch.setattr(pipeline, "write_image", write)
    return "KeyError"


def _check_outputs(out: Path, images: list[Path], failed: set[str]) -> None:
    for src in images:
        target = out / src.name
        if src.name in failed:
            assert not target.exists()
        else:
            with Image.open(target) as im:
                assert im.size == (52, 36)
    assert not [p for p in out.parent.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("backend", ["ort", "openvino", "torch"])
@pytest.mark.parametrize("stage", ["read", "infer", "write"])
def test_an_exception_at_any_stage_fails_that_image_only(models, stage, backend, tmp_path, monkeypatch):
    images = _images(tmp_path / "in")
    kind = _inject(monkeypatch, stage, backend)
    report = tmp_path / "r.jsonl"
    result = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *models[backend],
                                 "--report", str(report), "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and errors[-1] == "error: 1 of 5 images failed", result.stderr
    where = tmp_path / ("out" if stage == "write" else "in") / "img1_poison.png"
    assert errors[0].startswith(f"error: {where}: {kind}: ") or (stage == "write" and kind in errors[0])
    rows = read_report(report)  # every line is JSON
    assert [r["type"] for r in rows] == ["run"] + ["image"] * 5 + ["summary"]
    failed = [r for r in rows if r.get("status") == "failed"]
    assert len(failed) == 1 and failed[0]["error"] == kind and failed[0]["source"].endswith("img1_poison.png")
    assert rows[-1]["done"] == 4 and rows[-1]["failed"] == 1 and rows[-1]["interrupted"] is False
    assert json.loads((tmp_path / "r.json").read_text())["failed"] == 1
    _check_outputs(tmp_path / "out", images, {"img1_poison.png"})


def test_ctrl_c_keeps_finished_outputs_and_the_report_says_what_was_done(models, tmp_path, monkeypatch):
    images = _images(tmp_path / "in")
    from hrx.runtime.onnxrt import OnnxRuntimeBackend

    real_infer = OnnxRuntimeBackend.infer

    def infer(self, tiles):
        if _is_poison(tiles):
            raise KeyboardInterrupt
        return real_infer(self, tiles)

    monkeypatch.setattr(OnnxRuntimeBackend, "infer", infer)
    report = tmp_path / "r.jsonl"
    result = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *models["ort"],
                                 "--report", str(report), "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 130 and "interrupted" in result.stderr, result.output
    rows = read_report(report)
    done = [r for r in rows if r.get("status") == "done"]
    assert [Path(r["source"]).name for r in done] == ["img0.png", "img1.png"]  # finished before the interrupt
    assert rows[-1]["type"] == "summary" and rows[-1]["interrupted"] is True and rows[-1]["done"] == 2
    assert json.loads((tmp_path / "r.json").read_text())["interrupted"] is True
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["img0.png", "img1.png"]
    _check_outputs(tmp_path / "out", images[:2], set())
    monkeypatch.setattr(OnnxRuntimeBackend, "infer", real_infer)  # resume: the rest, the report appended
    result = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *models["ort"],
                                 "--report", str(report), "--skip-existing"])
    assert result.exit_code == 0, result.output
    rows = read_report(report)
    assert [r["type"] for r in rows].count("summary") == 2 and rows[-1]["done"] == 3 and rows[-1]["skipped"] == 2
    _check_outputs(tmp_path / "out", images, set())


SLOW_HRX = """
import sys, time
from hrx.runtime.onnxrt import OnnxRuntimeBackend
real = OnnxRuntimeBackend.infer
def slow(self, tiles):
    time.sleep(0.05)
    return real(self, tiles)
OnnxRuntimeBackend.infer = slow
from hrx.cli.main import app
sys.argv = ["hrx"] + sys.argv[1:]
app()
"""


@pytest.mark.slow
def test_sigkill_mid_batch_leaves_valid_report_lines_and_resumes(models, tmp_path):
    """The whole process killed (SIGKILL) while images are in flight: every report line is JSON, every
    `done` row's output is whole, and a resume with --skip-existing and the report finishes the rest and
    removes the killed run's temporary files."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for k in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"p{k:02d}.png")
    report, out = tmp_path / "r.jsonl", tmp_path / "out"
    args = [str(folder), "-o", str(out), *models["ort"], "--report", str(report), "-q"]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_HRX, "upscale", *args], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if report.exists() and report.read_text().count('"type": "image"') >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()  # still running: killed mid-batch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    rows = read_report(report)
    assert rows[0]["type"] == "run" and all(r["type"] != "summary" for r in rows)
    done = [r for r in rows if r.get("status") == "done"]
    assert 3 <= len(done) < 12
    for r in done:
        with Image.open(r["output"]) as im:
            im.load()
            assert im.size == (80, 80)
    # a killed writer may leave its temporary file: make sure one is there, as a kill mid-write leaves it
    (out / f".p11.png.{rows[0]['run']}.deadbeef.tmp").write_bytes(b"\x89PNG half")
    result = runner.invoke(app, ["upscale", *args[:-1], "--skip-existing"])
    assert result.exit_code == 0, result.output
    rows = read_report(report)
    assert rows[-1]["type"] == "summary" and rows[-1]["done"] + rows[-1]["skipped"] == 12
    assert rows[-1]["skipped"] >= len(done)
    assert sorted(p.name for p in out.iterdir()) == [f"p{k:02d}.png" for k in range(12)]  # no .tmp left


def test_debug_prints_the_chained_traceback_and_errors_stay_one_line_without_it(models, tmp_path, monkeypatch):
    _images(tmp_path / "in", 1)

    def broken(*args, **kwargs):
        try:
            raise ZeroDivisionError("the root cause")
        except ZeroDivisionError:
            raise hrx.errors.HRXError("cannot open the model") from None

    import hrx.runtime.factory as factory

    monkeypatch.setattr(factory, "open_backend", broken)
    args = ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *models["ort"]]
    line = f"error: {models['ort'][1]}: cannot open the model"  # an error opening the model names its file
    plain = runner.invoke(app, args)
    assert plain.exit_code == 1 and plain.stderr.strip().splitlines() == [line]
    for how in (["--debug"], []):
        env = {} if how else {"HRX_DEBUG": "1"}
        debug = runner.invoke(app, args + how, env=env)
        assert debug.exit_code == 1
        assert "Traceback" in debug.stderr and "ZeroDivisionError: the root cause" in debug.stderr, debug.stderr
        assert debug.stderr.strip().splitlines()[-1] == line
    # an error that is not HRX's own is one line too, not a bare traceback
    monkeypatch.setattr(factory, "open_backend", lambda *a, **k: {}["missing key"])
    other = runner.invoke(app, args)
    assert other.exit_code == 1 and other.stderr.strip().splitlines() == [
        "error: KeyError: 'missing key' (--debug shows the traceback)"]


def test_files_get_their_final_mode_without_touching_the_umask(tmp_path, monkeypatch):
    """Encoder threads write at once: every file gets 0666 less the umask, and the umask is never set (a
    set-and-restore would hand a concurrent thread's files mode 0666)."""
    import stat
    import threading

    from hrx.paths import atomic_write_bytes, remove_temporaries, temporary_name

    mask = os.umask(0o027)
    try:
        def no_umask(*args):
            raise AssertionError("the process umask was changed")

        monkeypatch.setattr(os, "umask", no_umask)
        threads = [threading.Thread(target=atomic_write_bytes, args=(tmp_path / f"f{k}.bin", b"x" * k, "0badc0de"))
                   for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        monkeypatch.undo()
        os.umask(mask)
    modes = {stat.S_IMODE((tmp_path / f"f{k}.bin").stat().st_mode) for k in range(16)}
    assert modes == {0o666 & ~0o027}
    # a cleanup removes the temporaries of its own run id only
    target = tmp_path / "f0.bin"
    mine, other = temporary_name(target, "0badc0de"), temporary_name(target, "12345678")
    mine.write_bytes(b"half")
    other.write_bytes(b"another run's, in flight")
    assert remove_temporaries([target], "0badc0de") == 1 and not mine.exists() and other.exists()


def test_every_report_row_is_fsynced_on_the_report_itself(tmp_path, monkeypatch):
    """The crash promise of the report (docs/reliability.md): each row is on disk before the next file is
    reported. A reader during the run sees the page cache either way, so the fsync calls are counted: one
    per row, on the report's own descriptor, after the row's bytes are written."""
    import dataclasses

    from hrx.runtime import report

    @dataclasses.dataclass
    class Row:
        source: str
        status: str

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(report.os, "fsync", lambda fd: (synced.append(os.fstat(fd)), real_fsync(fd))[1])
    path = tmp_path / "report.jsonl"
    with report.ReportWriter(path, "0badc0de") as writer:
        rows = [lambda: writer.start(2, 1), lambda: writer.video(Row("a.mkv", "done")),
                lambda: writer.image(Row("b.png", "done")), lambda: writer.image(Row("c.png", "failed")),
                lambda: writer.summary({"done": 1, "failed": 1, "images": [], "videos": [{"status": "done"}]})]
        for n, write_row in enumerate(rows, 1):
            write_row()
            st = path.stat()
            assert len(synced) == n, f"row {n}: {len(synced)} fsync calls"
            assert (synced[-1].st_dev, synced[-1].st_ino) == (st.st_dev, st.st_ino)  # the report, not another file
            assert synced[-1].st_size == st.st_size  # after the row was written
    assert [r["type"] for r in report.read_report(path)] == ["run", "video", "image", "image", "summary"]

def test_a_report_that_fails_while_opening_leaves_no_file_open(tmp_path, monkeypatch):
    """Appending to a report first cuts a partial last line; when that fails, the file opened for it is
    closed again and the error is one line."""
    import errno

    import hrx.runtime.report as report
    from hrx.errors import HRXError

    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"type": "run", "run": "0123abcd"}\n{"type": "ima')

    def fails(fd, where):
        raise OSError(errno.EIO, "Input/output error")

    def open_on_report() -> int:
        return sum(os.readlink(f"/proc/self/fd/{n}") == str(path) for n in os.listdir("/proc/self/fd")
                   if os.path.exists(f"/proc/self/fd/{n}"))

    monkeypatch.setattr(report, "_drop_partial_line", fails)
    with pytest.raises(HRXError, match=r"r\.jsonl: cannot write the report \(Input/output error\)"):
        report.ReportWriter(path, "89abcdef", append=True)
    assert open_on_report() == 0
    monkeypatch.setattr(report, "_drop_partial_line", lambda fd, where: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        report.ReportWriter(path, "89abcdef", append=True)
    assert open_on_report() == 0
