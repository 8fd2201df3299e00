"""hrx upscale --ray on a real local Ray cluster (ray.init(num_cpus=2)): the same outputs, byte for byte, and
the same report as a plain run; a corrupt file is a failed row; an actor killed in the middle of a write is
restarted and every output comes out whole; --skip-existing finishes an interrupted run; a video's segments
spread over two actors join into the local run's frames."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from hrx.cli.main import app
from hrx.paths import temporary_name
from hrx.runtime.distributed import RayOptions, UpscaleActor, default_actors, run_batch_ray
from hrx.runtime.factory import BackendRequest
from hrx.runtime.pipeline import BatchOptions, plan_jobs

import ray  # the ray extra, installed by scripts/setup.sh --test

runner = CliRunner()


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _images(folder: Path) -> Path:
    """Small images of several layouts, one in a sub-folder, and one corrupt file."""
    from skimage import data

    (folder / "sub").mkdir(parents=True)
    Image.fromarray(data.astronaut()[100:150, 150:215]).save(folder / "rgb.png")
    Image.fromarray(data.camera()[200:236, 200:250]).save(folder / "gray.png")
    rgba = np.dstack([data.coffee()[50:90, 60:100], np.linspace(0, 255, 1600).reshape(40, 40).astype(np.uint8)])
    Image.fromarray(rgba).save(folder / "sub" / "alpha.png")
    Image.fromarray(data.chelsea()[80:120, 90:140]).save(folder / "sub" / "cat.jpg", quality=90)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return folder


def _run(*args: str) -> tuple[int, str]:
    r = runner.invoke(app, ["upscale", *args])
    return r.exit_code, r.output


def _outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def local(hrx_t_dynamic, tmp_path_factory) -> dict:
    """The plain `hrx upscale` run every Ray run is compared with."""
    tmp = tmp_path_factory.mktemp("ray")
    images = _images(tmp / "in")
    code, out = _run(str(images), "-r", "-o", str(tmp / "local"), "--engine", str(hrx_t_dynamic[1]),
                     "--json", str(tmp / "local.json"))
    assert code == 1 and "broken.png" in out, out  # the corrupt file fails, the rest is written
    return {"dir": tmp, "images": images, "onnx": hrx_t_dynamic[1], "outputs": _outputs(tmp / "local"),
            "report": json.loads((tmp / "local.json").read_text())}


def _rows(report: dict) -> list[tuple]:
    return [(r["source"], r["output"], r["status"], r["width"], r["height"], r["out_width"], r["out_height"], r["tiles"])
            for r in report["images"]]


@pytest.mark.slow
def test_ray_matches_plain_upscale_byte_for_byte(cluster, local, tmp_path):
    out = tmp_path / "ray"
    code, text = _run(str(local["images"]), "-r", "-o", str(out), "--engine", str(local["onnx"]), "--ray",
                      "--json", str(tmp_path / "ray.json"))
    assert code == 1, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert errors[0] == f"error: {local['images'] / 'broken.png'}: not an image, or a format Pillow cannot read"
    assert errors[-1] == "error: 1 of 5 images failed"
    assert len(local["outputs"]) == 4 and _outputs(out) == {k: v for k, v in local["outputs"].items()}
    report = json.loads((tmp_path / "ray.json").read_text())
    assert report["backend"].startswith("ray (1 actor")  # 2 CPUs: N-1 = 1 actor
    assert (report["done"], report["failed"], report["skipped"]) == (4, 1, 0)
    mine = [(s.replace(str(out), "OUT"), *rest) for s, *rest in _rows(report)]
    theirs = [(s.replace(str(local["dir"] / "local"), "OUT"), *rest) for s, *rest in _rows(local["report"])]
    assert [(r[0], r[2:]) for r in mine] == [(r[0], r[2:]) for r in theirs]  # same images, order, status, sizes
    failed = [r for r in report["images"] if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["reason"].startswith(str(local["images"] / "broken.png"))


def _crashing_actor(marker: str):
    """An UpscaleActor whose first call anywhere (``marker`` does not exist yet) dies as a killed process
    would, in the middle of writing this run's temporary file beside an output. Defined in a function so
    that Ray ships the class by value to its workers."""

    class CrashOnce(UpscaleActor):
        def __call__(self, batch):
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return super().__call__(batch)
            os.close(fd)
            output = Path(str(batch["output"][0]))
            output.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary_name(output, self.options.run_id), "wb") as f:
                f.write(b"\x89PNG\r\n\x1a\n half an image")
                f.flush()
                os._exit(1)

    return CrashOnce


@pytest.mark.slow
def test_actor_killed_mid_write_is_restarted_and_outputs_are_whole(cluster, local, tmp_path):
    out = tmp_path / "ray"
    marker = tmp_path / "crashed"
    jobs = plan_jobs([local["images"]], out, "png", recursive=True)
    out.mkdir()
    other = out / ".rgb.png.0123abcd.deadbeef.tmp"  # another run writing into the same folder
    other.write_bytes(b"another run's image in flight")
    request = BackendRequest(engine=Path(local["onnx"]))
    report = run_batch_ray(request, jobs, None, "blend", BatchOptions(run_id="feedf00d"), RayOptions(),
                           actor=_crashing_actor(str(marker)))
    assert marker.exists()  # an actor did die, in the middle of writing a .tmp beside an output
    statuses = {Path(r.source).name: r.status for r in report.results}
    assert statuses == {"rgb.png": "done", "gray.png": "done", "alpha.png": "done", "cat.jpg": "done",
                        "broken.png": "failed"}
    other.unlink()  # it was kept: this run removes its own temporaries only
    assert _outputs(out) == local["outputs"]  # every output whole and identical, no temporary left


@pytest.mark.slow
def test_a_failed_ray_job_returns_what_was_done_and_fails_the_rest(cluster, local, tmp_path):
    """An error outside the per-image handling (here: the actor raises on one image, every time) fails the
    Ray job: the images whose rows came back keep them, the others are failed rows that say why."""

    class FailsOnGray(UpscaleActor):
        def __call__(self, batch):
            if Path(str(batch["source"][0])).name == "gray.png":
                raise RuntimeError("the actor lost its device")
            return super().__call__(batch)

    out = tmp_path / "ray"
    jobs = plan_jobs([local["images"]], out, "png", recursive=True)
    report = run_batch_ray(BackendRequest(engine=Path(local["onnx"])), jobs, None, "blend", BatchOptions(),
                           RayOptions(stop_timeout=1), actor=FailsOnGray)
    assert [r.source for r in report.results] == [str(j.source) for j in jobs]  # every image has its row
    rows = {Path(r.source).name: r for r in report.results}
    gray = rows["gray.png"]
    assert gray.status == "failed" and not gray.attempted and "the Ray job failed" in gray.reason, gray
    assert "the actor lost its device" in gray.reason, gray.reason
    for name, row in rows.items():
        if row.status == "done":
            assert _outputs(out)[str(Path(row.output).relative_to(out))] == local["outputs"][str(Path(row.output).relative_to(out))]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_skip_existing_finishes_an_interrupted_run(cluster, local, tmp_path):
    out = tmp_path / "ray"
    (out / "sub").mkdir(parents=True)
    (out / "rgb.png").write_bytes(local["outputs"]["rgb.png"])  # what a driver that died had finished
    (out / "sub" / "alpha.png").write_bytes(local["outputs"]["sub/alpha.png"])
    code, text = _run(str(local["images"]), "-r", "-o", str(out), "--engine", str(local["onnx"]), "--ray",
                      "--skip-existing", "--json", str(tmp_path / "r.json"), "-q")
    assert code == 1, text  # the corrupt file still fails
    report = json.loads((tmp_path / "r.json").read_text())
    status = {Path(r["source"]).name: r["status"] for r in report["images"]}
    assert status == {"rgb.png": "skipped", "alpha.png": "skipped", "gray.png": "done", "cat.jpg": "done",
                      "broken.png": "failed"}
    assert _outputs(out) == local["outputs"]


@pytest.mark.parametrize("cpus,gpus,asked,todo,expected", [
    (2, 0, 0, 10, (1, 1.0, 0.0)),  # N-1 CPU actors: one core stays with Ray Data's readers
    (16, 0, 0, 100, (15, 1.0, 0.0)),
    (16, 0, 0, 3, (3, 1.0, 0.0)),  # no more actors than images
    (16, 0, 40, 100, (15, 1.0, 0.0)),  # asking for more than N-1 is capped
    (1, 0, 0, 10, (1, 0.5, 0.0)),  # one CPU: a fractional actor
    (8, 2, 0, 10, (2, 1.0, 1.0)),  # one actor per GPU
])
def test_default_actors_never_take_every_core(cpus, gpus, asked, todo, expected):
    assert default_actors(cpus, gpus, RayOptions(actors=asked), todo) == expected
    actors, per, _ = expected
    if not gpus:
        assert actors * per <= max(cpus - 1, 0.5)


@pytest.mark.slow
def test_ray_refuses_checkpoints_in_one_line(local, tmp_path):
    code, text = _run(str(local["images"]), "-o", str(tmp_path / "o"), "--model", "hrx-t", "--ray")
    lines = text.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--ray runs exported models" in lines[0], text
    assert os.listdir(tmp_path) == [] or not any((tmp_path / "o").rglob("*.png"))


@pytest.mark.slow
def test_video_segments_on_actors_equal_local_run(cluster, hrx_t_dynamic, tmp_path):
    """Segments of a video spread over two Ray Data actors, joined by the driver: the local run's output."""
    pytest.importorskip("av", reason="PyAV (pip install 'hrx[video]')")
    from test_video import FRAMES, _hashes, make_clip, packets_of

    from hrx.runtime.factory import open_backend
    from hrx.runtime.tiling import TileSpec
    from hrx.runtime.video import VideoOptions, upscale_video
    from hrx.runtime.video.ray import upscale_video_ray

    src = make_clip(tmp_path / "clip.mkv", audio=("aac",))
    options = VideoOptions(codec="ffv1", segment_frames=2)
    request = BackendRequest(engine=hrx_t_dynamic[1], threads=1)
    local = open_backend(request)
    i = local.info
    spec = TileSpec(i.tile, i.tile_overlap, i.scale, i.size_multiple, i.batch, "blend")
    try:
        upscale_video(local, spec, src, tmp_path / "local.mkv", options)
    finally:
        local.close()
    result = upscale_video_ray(request, i, spec, src, tmp_path / "ray.mkv", options,
                               RayOptions(actors=2, cpus_per_actor=0.5))
    assert result.status == "done" and result.segments == 4 and result.frames == FRAMES
    assert _hashes(tmp_path / "ray.mkv") == _hashes(tmp_path / "local.mkv")
    assert packets_of(tmp_path / "ray.mkv", "audio") == packets_of(src, "audio")
    assert packets_of(tmp_path / "ray.mkv", "subtitle") == packets_of(src, "subtitle")


def test_videos_on_ray_open_no_backend_on_the_driver(tmp_path, monkeypatch):
    """With --ray the driver reads the model's metadata and plans; it opens no backend (no compile, no
    engine build, no precision gate) to learn the tile and scale: only the actors do."""
    pytest.importorskip("av", reason="PyAV (pip install 'hrx[video]')")
    import hrx.runtime.factory as factory
    import hrx.runtime.video.ray as video_on_ray
    from runtime_support import write_toy
    from test_video import make_clip

    from hrx.runtime.video import VideoResult

    opened, planned = [], []
    real_open = factory.open_backend

    def counted(request):
        opened.append(request)
        return real_open(request)

    def on_actors(request, info, spec, source, output, options, ray_options, model_id):
        planned.append((request.engine, info.scale, spec.tile, spec.stride))
        result = VideoResult(str(source), str(output))
        result.status, result.frames = "done", 8
        return result

    monkeypatch.setattr(factory, "open_backend", counted)
    monkeypatch.setattr(video_on_ray, "upscale_video_ray", on_actors)
    toy = write_toy(tmp_path / "toy.onnx", tile=16, batch=2, overlap=4)
    src = make_clip(tmp_path / "clip.mkv", audio=(), subtitles=False, chapters=False)
    code, text = _run(str(src), "-o", str(tmp_path / "out"), "--engine", str(toy), "--backend", "onnxrt-cpu", "--ray")
    assert code == 0, text
    assert opened == []
    assert planned == [(toy.resolve(), 2, 16, 12)]  # the metadata's scale and tile, overlap 4: stride 12
    assert "backend: ray for 1 video (toy x2, tile 16, batch 2, overlap 4, blend)" in text, text
