"""One writer per output: the lock of an image output (``.NAME.hrx-lock``) and of a video's work folder.
A second run on an output that another process is writing fails that file in one line, the first run
finishes it, and neither crashes; two threads of one process exclude each other too."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hrx.cli.main import app
from hrx.errors import OutputBusy
from hrx.paths import hold_lock, lock_name
from runtime_support import write_toy

runner = CliRunner()

# `hrx upscale` whose inference waits for the file GO (after touching STARTED): a run that holds its locks
# for as long as the test needs
HELD_HRX = """
import os, sys, time
from hrx.runtime.onnxrt import OnnxRuntimeBackend
real = OnnxRuntimeBackend.infer
started, go = sys.argv[1], sys.argv[2]
def held(self, tiles):
    open(started, "a").close()
    while not os.path.exists(go):
        time.sleep(0.02)
    return real(self, tiles)
OnnxRuntimeBackend.infer = held
from hrx.cli.main import app
sys.argv = ["hrx"] + sys.argv[3:]
app()
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> list[str]:
    path = write_toy(tmp_path_factory.mktemp("toy") / "toy.onnx", tile=16, batch=2)
    return ["--engine", str(path), "--backend", "onnxrt-cpu", "--workers", "1"]


def _start_holder(tmp_path: Path, args: list[str]) -> tuple[subprocess.Popen, Path]:
    """``hrx upscale ARGS`` in another process, stopped at its first inference; returns it and its GO file."""
    started, go = tmp_path / "started", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", HELD_HRX, str(started), str(go), "upscale", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0].decode()
        time.sleep(0.02)
    return proc, go


def _finish(proc: subprocess.Popen, go: Path) -> tuple[int, str]:
    go.touch()
    out, _ = proc.communicate(timeout=120)
    return proc.returncode, out.decode()


def test_a_lock_excludes_a_second_holder_names_the_output_and_is_removed(tmp_path):
    output = tmp_path / "out" / "a.png"
    first = hold_lock(lock_name(output), output)
    assert lock_name(output).is_file() and lock_name(output).name == ".a.png.hrx-lock"
    results: list[str] = []

    def second() -> None:  # another thread of this process: excluded as another process would be
        try:
            hold_lock(lock_name(output), output).release()
            results.append("held")
        except OutputBusy as e:
            results.append(str(e))

    t = threading.Thread(target=second)
    t.start()
    t.join()
    assert results == [f"{output}: another hrx run is writing it (it holds {lock_name(output)}); this run leaves "
                       "it to that one"]
    first.release()
    assert not lock_name(output).exists()  # removed with the lock
    with hold_lock(lock_name(output), output):  # free again
        pass
    folder = tmp_path / "out" / ".clip.mkv.hrx-work"
    with hold_lock(folder, tmp_path / "out" / "clip.mkv", folder=True):
        with pytest.raises(OutputBusy, match="clip.mkv: another hrx run is writing it"):
            hold_lock(folder, tmp_path / "out" / "clip.mkv", folder=True)
        (folder / "seg-00000.mkv").write_bytes(b"a finished segment")
    assert (folder / "seg-00000.mkv").is_file()  # a folder with work in it stays for the next run
    lock = hold_lock(folder, tmp_path / "out" / "clip.mkv", folder=True)
    (folder / "seg-00000.mkv").unlink()
    lock.release()
    assert not folder.exists()  # an empty one goes with its lock


def test_a_stale_lock_file_of_a_killed_writer_is_taken_over(tmp_path):
    output = tmp_path / "a.png"
    lock_name(output).write_bytes(b"")  # a writer killed while it held the lock: the file stays, unlocked
    with hold_lock(lock_name(output), output):
        pass
    assert not lock_name(output).exists()


def test_a_second_run_on_an_image_another_run_is_writing_fails_it_in_one_line(toy, tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "in").mkdir()
    (tmp_path / "more").mkdir()
    for path in (tmp_path / "in" / "a.png", tmp_path / "in" / "b.png", tmp_path / "more" / "c.png"):
        Image.fromarray(rng.integers(0, 256, (18, 26, 3), dtype=np.uint8)).save(path)
    out = tmp_path / "out"
    holder, go = _start_holder(tmp_path, [str(tmp_path / "in"), "-o", str(out), *toy, "-q"])
    try:  # the holder is inside a.png (and has b.png decoded next): this run fails a.png, writes c.png
        r = runner.invoke(app, ["upscale", str(tmp_path / "in" / "a.png"), str(tmp_path / "more" / "c.png"),
                                "-o", str(out), *toy, "-q"])
    finally:
        code, text = _finish(holder, go)
    assert r.exit_code == 1, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {tmp_path / 'in' / 'a.png'}: {out / 'a.png'}: another hrx run is writing it (it "
                      f"holds {out / '.a.png.hrx-lock'}); this run leaves it to that one",
                      "error: 1 of 2 images failed"], r.output
    assert code == 0, text  # the holder finished both of its images
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"]  # no lock or temporary left
    for name in ("a.png", "b.png", "c.png"):
        with Image.open(out / name) as im:
            assert im.size == (52, 36)


def test_a_second_run_on_a_video_another_run_is_making_fails_it_and_neither_crashes(toy, tmp_path):
    pytest.importorskip("av", reason="PyAV (pip install 'hrx[video]')")
    from test_video import FRAMES, frames_of, make_clip

    src = make_clip(tmp_path / "clip.mkv", audio=(), subtitles=False, chapters=False)
    out = tmp_path / "out"
    args = [str(src), "-o", str(out), *toy, "--segment-frames", "2"]
    holder, go = _start_holder(tmp_path, [*args, "-q"])
    work = out / ".clip.mkv.hrx-work"
    try:  # the holder is inside its first segment, its work folder planned
        before = sorted(p.name for p in work.iterdir())
        r = runner.invoke(app, ["upscale", *args, "-q"])
        after = sorted(p.name for p in work.iterdir())
    finally:
        code, text = _finish(holder, go)
    assert r.exit_code == 1, r.output
    assert r.output.splitlines() == [f"error: {out / 'clip.mkv'}: another hrx run is writing it (it holds {work}); "
                                     "this run leaves it to that one", "error: 1 of 1 videos failed"], r.output
    assert before == after and "plan.json" in before  # the second run touched nothing in the holder's folder
    assert code == 0, text
    assert sorted(os.listdir(out)) == ["clip.mkv"]  # the work folder went with the holder's lock
    frames = frames_of(out / "clip.mkv")
    assert len(frames) == FRAMES and frames[0][3].shape[:2] != (0, 0)
