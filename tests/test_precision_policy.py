"""--precision auto|fp32|bf16|int8: CPU flags (injected), the BF16 fidelity gate (passing on the toy, failing
on a model of huge activations, cached), the default `hrx upscale` path on OpenVINO with its first line,
the fallback to ONNX Runtime, one-line errors, PyTorch BF16."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import hrx
from conftest import randomize_params
from hrx import metrics
from hrx.cli.main import app
from hrx.errors import HRXError
from hrx.interface import ModelInfo
from hrx.runtime import precision_policy as policy
from runtime_support import toy_model, write_toy

pytest.importorskip("openvino")
runner = CliRunner()
WITH_BF16 = frozenset({"avx512f", "avx512_bf16"})
WITHOUT_BF16 = frozenset({"avx512f", "avx2"})
needs_bf16 = pytest.mark.skipif(not policy.bf16_native(policy.cpu_flags()),
                                reason="this CPU has no AMX-BF16 / AVX512-BF16: OpenVINO does not run BF16 here")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HRX_CACHE_DIR", str(tmp_path / "cache"))


def huge_activations(path, offset: float = 1e4):
    """x2 nearest upscaling through two 1x1 convs that add and remove a huge offset: exact in FP32,
    ruined in BF16 (8 mantissa bits: the step at 1e4 is 64)."""
    w1 = np.eye(3, dtype=np.float32).reshape(3, 3, 1, 1)
    b1 = np.full(3, offset, np.float32)
    w2 = np.zeros((12, 3, 1, 1), np.float32)
    for c in range(3):
        w2[4 * c:4 * c + 4, c] = 1.0
    b2 = np.full(12, -offset, np.float32)
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["h"]),
             helper.make_node("Conv", ["h", "w2", "b2"], ["y"]),
             helper.make_node("DepthToSpace", ["y"], ["output"], blocksize=2, mode="CRD")]
    graph = helper.make_graph(nodes, "huge", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 64, 64])],
                              [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    info = ModelInfo(arch="huge", scale=2, in_channels=3, out_channels=3, tile=32, batch=1, size_multiple=1,
                     tile_overlap=0, opset=17)
    for k, v in info.to_props().items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def test_cpu_flags_from_cpuinfo_text():
    text = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    flags = policy.cpu_flags(text)
    assert {"avx512_bf16", "amx_tile"} <= flags and policy.bf16_native(flags)
    assert not policy.bf16_native(policy.cpu_flags("flags : avx512f avx512_vnni amx_int8\n"))
    assert policy.cpu_flags("no flags line") == frozenset()


def test_auto_without_bf16_flags_is_fp32_without_measuring(tmp_path, monkeypatch):
    path = write_toy(tmp_path / "toy.onnx")
    monkeypatch.setattr(policy, "measure_gate", lambda *a, **k: pytest.fail("no gate without BF16 flags"))
    choice = policy.choose_precision("auto", path, ModelInfo.from_onnx(path), flags=WITHOUT_BF16)
    assert (choice.precision, choice.compute) == ("fp32", "fp32")
    assert choice.line == "precision: fp32 (this CPU has neither AMX-BF16 nor AVX512-BF16 (flags: avx512f))"
    choice = policy.choose_precision("auto", path, ModelInfo.from_onnx(path), flags=WITH_BF16, deep_output=True)
    assert choice.precision == "fp32" and "outputs deeper than 8 bits" in choice.reason
    assert policy.choose_precision("fp32", path, ModelInfo.from_onnx(path), flags=WITH_BF16).line == "precision: fp32 (asked)"


def test_deep_outputs_are_found_from_headers(tmp_path):
    """16-bit images (kept by PNG / TIFF, not JPEG) and 10-bit videos (unless --pix-fmt says 8) ask for FP32."""
    from hrx.runtime.upscale_run import sixteen_bit_images as sixteen_bit_output
    from hrx.runtime.video.batch import deep_videos

    from hrx.runtime.images import Picture, write_image
    from hrx.runtime.pipeline import plan_jobs

    folder = _photo(tmp_path / "in")
    assert not sixteen_bit_output(plan_jobs([folder], tmp_path / "o", "png", False), "png")
    write_image(folder / "deep.png", Picture(np.zeros((8, 8, 3), np.float32), None, 16), "png")
    jobs = plan_jobs([folder], tmp_path / "o", "png", False)
    assert sixteen_bit_output(jobs, "png") and sixteen_bit_output(jobs, "tiff") and not sixteen_bit_output(jobs, "jpeg")
    av = pytest.importorskip("av", reason="PyAV (pip install 'hrx[video]')")
    from hrx.runtime.video.batch import VideoJob

    clips = {}
    for pix_fmt in ("yuv420p", "yuv420p10le"):
        clips[pix_fmt] = tmp_path / f"{pix_fmt}.mkv"
        with av.open(str(clips[pix_fmt]), "w") as out:
            stream = out.add_stream("ffv1", rate=25)
            stream.width, stream.height, stream.pix_fmt = 16, 16, pix_fmt
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), np.uint8), format="rgb24").reformat(format=pix_fmt)
            for packet in [*stream.encode(frame), *stream.encode()]:
                out.mux(packet)
    assert not deep_videos([VideoJob(clips["yuv420p"], tmp_path / "a.mkv")], None)
    assert deep_videos([VideoJob(clips["yuv420p10le"], tmp_path / "b.mkv")], None)
    assert not deep_videos([VideoJob(clips["yuv420p10le"], tmp_path / "b.mkv")], "yuv420p")
    assert deep_videos([VideoJob(clips["yuv420p"], tmp_path / "a.mkv")], "yuv420p10le")


def test_impossible_requests_are_one_line_errors(tmp_path):
    path = write_toy(tmp_path / "toy.onnx")
    info = ModelInfo.from_onnx(path)
    with pytest.raises(HRXError, match=r"--precision bf16: this CPU has neither AMX-BF16 nor AVX512-BF16"):
        policy.choose_precision("bf16", path, info, flags=WITHOUT_BF16)
    with pytest.raises(HRXError, match=r"toy.onnx: --precision int8 needs an INT8 Q/DQ file .*`hrx calibrate "):
        policy.choose_precision("int8", path, info, flags=WITH_BF16)


def test_int8_files_run_as_int8_with_float_ops_in_fp32(tmp_path):
    """The policy reads the file's metadata (the INT8 numerics on OpenVINO: tests/test_calibrate_openvino.py)."""
    model = toy_model(tile=16)
    for p in model.metadata_props:
        if p.key == "precision":
            p.value = "int8-qdq"
    onnx.save(model, str(tmp_path / "q.onnx"))
    info = ModelInfo.from_onnx(tmp_path / "q.onnx")
    for asked in ("auto", "int8"):
        choice = policy.choose_precision(asked, tmp_path / "q.onnx", info, flags=WITH_BF16)
        assert (choice.precision, choice.compute) == ("int8", "fp32")
    with pytest.raises(HRXError, match="q.onnx: an INT8 Q/DQ file runs with --precision int8 or auto, not bf16"):
        policy.choose_precision("bf16", tmp_path / "q.onnx", info, flags=WITH_BF16)
    res = runner.invoke(app, ["upscale", str(_photo(tmp_path / "in")), "-o", str(tmp_path / "out"), "--engine",
                              str(tmp_path / "q.onnx"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert res.stderr.splitlines()[0] == "precision: int8 (the file is an INT8 Q/DQ export; the other ops in FP32)"


@needs_bf16
def test_gate_passes_the_toy_and_is_measured_once(tmp_path, monkeypatch):
    path = write_toy(tmp_path / "toy.onnx", tile=32)
    info = ModelInfo.from_onnx(path)
    choice = policy.choose_precision("auto", path, info, flags=policy.cpu_flags())
    assert (choice.precision, choice.compute) == ("bf16", "bf16"), choice.line
    assert choice.line.startswith("precision: bf16 (BF16 passed the fidelity gate: ")
    records = list((tmp_path / "cache" / "precision-gate").glob("*.json"))
    assert len(records) == 1
    psnr = json.loads(records[0].read_text())["psnr"]
    assert 50.0 <= psnr < 90.0  # BF16 really ran, and it is close
    monkeypatch.setattr(policy, "measure_gate", lambda *a, **k: pytest.fail("measured twice"))
    again = policy.choose_precision("auto", path, info, flags=policy.cpu_flags())
    assert again.precision == "bf16" and "measured earlier" in again.reason
    # the threshold is applied to the recorded figure: a stricter one needs no new measurement
    strict = policy.choose_precision("auto", path, info, flags=policy.cpu_flags(), min_psnr=psnr + 1)
    assert strict.precision == "fp32" and "BF16 failed the fidelity gate" in strict.reason


@needs_bf16
def test_gate_falls_back_to_fp32_on_huge_activations(tmp_path):
    path = huge_activations(tmp_path / "huge.onnx")
    gate = policy.measure_gate(path, ModelInfo.from_onnx(path))
    assert gate.psnr < 30.0 and gate.tiles >= 4
    choice = policy.choose_precision("auto", path, ModelInfo.from_onnx(path), flags=policy.cpu_flags())
    assert (choice.precision, choice.compute) == ("fp32", "fp32")
    assert "BF16 failed the fidelity gate" in choice.line and "< 50 dB" in choice.line
    # the same graph is exact in FP32 (OpenVINO pinned to f32 against ONNX Runtime)
    from hrx.runtime.onnxrt import OnnxRuntimeBackend
    from hrx.runtime.openvino import OpenVINOBackend

    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(OpenVINOBackend(path).infer(x), OnnxRuntimeBackend(path).infer(x), atol=1e-4)


def test_gate_images_from_a_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(folder / "b.png")
    info = ModelInfo.from_onnx(write_toy(tmp_path / "toy.onnx"))
    pictures, source = policy.gate_images(info, folder)
    assert source == str(folder) and [p.shape for p in pictures] == [(3, 128, 128), (3, 40, 50)]
    assert len(policy.gate_images(info)[0]) == 4  # the bundled crops
    (tmp_path / "empty").mkdir()
    with pytest.raises(HRXError, match="empty: no images for the fidelity gate"):
        policy.gate_images(info, tmp_path / "empty")


def _photo(folder, name="p.png", size=(40, 36)):
    from PIL import Image

    folder.mkdir(exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_upscale_default_is_openvino_and_says_why_first(tmp_path):
    engine = write_toy(tmp_path / "toy.onnx", tile=16, batch=2)
    _photo(tmp_path / "in")
    res = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--engine", str(engine),
                              "--workers", "1"])
    assert res.exit_code == 0, res.output
    lines = res.stderr.splitlines()
    assert lines[0].startswith("precision: "), res.stderr
    assert lines[1].startswith("backend: openvino ("), res.stderr
    # same image through ONNX Runtime, FP32 asked: within BF16 rounding of the default's 8-bit file
    res = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "ort"), "--engine", str(engine),
                              "--backend", "onnxrt-cpu", "--precision", "fp32", "--workers", "1"])
    assert res.exit_code == 0, res.output
    from PIL import Image

    a = np.asarray(Image.open(tmp_path / "out" / "p.png"), dtype=np.int16)
    b = np.asarray(Image.open(tmp_path / "ort" / "p.png"), dtype=np.int16)
    assert a.shape == b.shape == (72, 80, 3) and np.abs(a - b).max() <= 3


def test_a_run_reads_the_model_for_its_hash_once(tmp_path, monkeypatch):
    """The gate's cache key, the gate's two OpenVINO models and every worker's compiled-model cache all take
    the model's sha256 from the one read when the run's precision is decided."""
    import hrx.paths

    engine = write_toy(tmp_path / "toy.onnx", tile=16, batch=2)
    _photo(tmp_path / "in")
    _photo(tmp_path / "gate", size=(24, 20))
    hashed = []
    real = hrx.paths.file_sha256
    monkeypatch.setattr(hrx.paths, "file_sha256", lambda path, *a: hashed.append(str(path)) or real(path, *a))
    monkeypatch.setattr(policy, "cpu_flags", lambda *a: WITH_BF16)  # the gate is measured (on a tiny photo)
    res = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--engine", str(engine),
                              "--backend", "openvino", "--workers", "2", "--gate-images", str(tmp_path / "gate")])
    assert res.exit_code == 0, res.output
    assert "fidelity gate" in res.stderr.splitlines()[0], res.stderr  # measured: two OpenVINO models
    assert "2 workers" in res.stderr, res.stderr  # and one per worker
    assert hashed == [str(engine)]


def test_upscale_falls_back_to_onnxruntime_with_one_line(tmp_path, monkeypatch):
    from test_runtime_openvino import _plugin_toy

    engine = _plugin_toy(tmp_path / "plugin.onnx", ops_metadata=True)
    _photo(tmp_path / "in")
    res = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--engine", str(engine)])
    assert res.exit_code == 0, res.output
    notes = [line for line in res.stderr.splitlines() if "running ONNX Runtime CPU instead" in line]
    assert len(notes) == 1 and "--ops native" in notes[0], res.stderr
    assert "backend: onnxrt-cpu" in res.stderr and (tmp_path / "out" / "p.png").is_file()
    # explicitly asked for, OpenVINO refuses in one line
    res = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "o2"), "--engine", str(engine),
                              "--backend", "openvino"])
    assert res.exit_code == 1 and res.stderr.strip().splitlines()[-1].startswith("error: ") and "--ops native" in res.stderr
    assert not (tmp_path / "o2").exists() or not any((tmp_path / "o2").iterdir())
    # a graph OpenVINO fails to compile (the same local function, without the metadata that says plugin)
    unlabelled = _plugin_toy(tmp_path / "unlabelled.onnx", ops_metadata=False)
    res = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "o4"), "--engine", str(unlabelled)])
    assert res.exit_code == 0, res.output
    notes = [line for line in res.stderr.splitlines() if "running ONNX Runtime CPU instead" in line]
    assert len(notes) == 1 and "unlabelled.onnx: OpenVINO cannot compile it (" in notes[0], res.stderr
    assert "backend: onnxrt-cpu" in res.stderr and (tmp_path / "o4" / "p.png").is_file()
    # OpenVINO not installed: the same fallback, naming the install command
    import hrx.runtime.openvino as ov_mod

    monkeypatch.setattr(ov_mod, "openvino_problem", lambda: "OpenVINO is not installed (pip install openvino)")
    res = runner.invoke(app, ["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "o3"),
                              "--engine", str(write_toy(tmp_path / "toy.onnx"))])
    assert res.exit_code == 0, res.output
    assert "OpenVINO is not installed (pip install openvino): running ONNX Runtime CPU instead" in res.stderr


def test_cli_errors_are_one_line_and_the_same_as_onnxruntime(tmp_path):
    engine = write_toy(tmp_path / "toy.onnx")
    folder = _photo(tmp_path / "in")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    errors = {}
    for backend in ("openvino", "onnxrt-cpu"):
        res = runner.invoke(app, ["upscale", str(folder), "-o", str(tmp_path / backend), "--engine", str(engine),
                                  "--backend", backend, "--precision", "fp32", "--quiet"])
        assert res.exit_code == 1 and (tmp_path / backend / "p.png").is_file()  # the batch went on
        errors[backend] = [line for line in res.stderr.splitlines() if line.startswith("error:")]
        assert not [p for p in (tmp_path / backend).iterdir() if p.name.startswith(".")]  # nothing half-written
    assert errors["openvino"] == errors["onnxrt-cpu"] and len(errors["openvino"]) == 2, errors
    res = runner.invoke(app, ["upscale", str(folder), "-o", str(tmp_path / "x"), "--engine", str(engine),
                              "--backend", "onnxrt-cpu", "--precision", "bf16"])
    assert res.exit_code == 1 and res.stderr.strip() == ("error: --precision bf16: ONNX Runtime has no BF16 path on "
                                                         "the CPU; use --backend openvino (or auto)")


def test_torch_bf16_autocast_channels_last(tmp_path):
    from hrx.runtime.torch_backend import TorchBackend

    torch.manual_seed(0)
    model = hrx.create_model("hrx-t", scale=2)
    randomize_params(model, 0.05)
    x = torch.rand(1, 3, 32, 32).numpy()
    fp32 = TorchBackend(model, tile=32).infer(x)
    bf16 = TorchBackend(model, tile=32, precision="bf16")
    assert next(bf16.model.parameters()).dtype == torch.float32  # autocast, weights stay FP32
    out = bf16.infer(x)
    psnr = metrics.psnr(np.clip(out, 0, 1), np.clip(fp32, 0, 1))
    assert 35.0 < psnr < 90.0, psnr  # BF16 ran (not identical) and stays close
    with pytest.raises(HRXError, match="PyTorch runs fp32 or bf16"):
        TorchBackend(model, precision="int8")


def test_a_read_only_cache_still_runs(tmp_path, monkeypatch):
    """No writable cache folder: the gate is measured (not kept) and OpenVINO compiles without its cache."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("HRX_CACHE_DIR", str(blocker))
    path = write_toy(tmp_path / "toy.onnx", tile=16)
    calls = []
    real = policy.measure_gate
    monkeypatch.setattr(policy, "measure_gate", lambda *a, **k: calls.append(1) or real(*a, **k))
    for _ in range(2):
        choice = policy.choose_precision("auto", path, ModelInfo.from_onnx(path), flags=WITH_BF16)
        assert choice.precision in ("bf16", "fp32") and "fidelity gate" in choice.reason
    assert len(calls) == 2 and blocker.is_file()


def test_gate_decides_on_recorded_numbers_on_every_cpu(tmp_path, monkeypatch):
    """The BF16 gate's logic without BF16 hardware: the PSNR is computed from given FP32 / BF16 outputs
    (an MSE of 1e-6 is 60 dB), the choice follows the threshold (50 dB: 55.2 passes, 47.0 fails, as
    measured for default-x2 and RRDBNet x4 on an AVX512-BF16 CPU), the figure is recorded once and the
    threshold applied on reading."""
    path = write_toy(tmp_path / "toy.onnx", tile=32)
    info = ModelInfo.from_onnx(path)
    fp32 = [np.full((3, 8, 8), 0.5, np.float32), np.zeros((3, 4, 4), np.float32)]
    bf16 = [fp32[0] + 1e-3, fp32[1] - 1e-3]  # squared error 1e-6 everywhere
    monkeypatch.setattr(policy, "_gate_outputs", lambda p, i, pictures, sha256="": ([fp32, bf16], 6))
    gate = policy.measure_gate(path, info)
    assert gate.psnr == pytest.approx(60.0, abs=1e-4) and gate.tiles == 6 and gate.source == "the bundled photos"

    measured = []

    def recorded(psnr):
        def measure(p, i, images=None, sha256=""):
            measured.append(psnr)
            return policy.GateResult(psnr, 4, "the bundled photos")
        return measure

    for psnr, want in ((55.2, "bf16"), (47.0, "fp32")):
        model = write_toy(tmp_path / f"toy{psnr}.onnx", tile=32, seed=int(psnr))  # one gate record per model
        monkeypatch.setattr(policy, "measure_gate", recorded(psnr))
        choice = policy.choose_precision("auto", model, info, flags=WITH_BF16)
        assert (choice.precision, choice.compute) == (want, want), choice.line
        verdict = "passed" if want == "bf16" else "failed"
        assert choice.line == (f"precision: {want} (BF16 {verdict} the fidelity gate: {psnr:.1f} dB "
                               f"{'>=' if want == 'bf16' else '<'} 50 dB against FP32 on 4 tiles of the bundled photos)")
    assert measured == [55.2, 47.0]
    again = policy.choose_precision("auto", tmp_path / "toy55.2.onnx", info, flags=WITH_BF16)
    assert again.precision == "bf16" and again.reason.endswith("; measured earlier") and measured == [55.2, 47.0]
    strict = policy.choose_precision("auto", tmp_path / "toy55.2.onnx", info, flags=WITH_BF16, min_psnr=56.0)
    assert strict.precision == "fp32" and measured == [55.2, 47.0]
    assert policy.choose_precision("auto", tmp_path / "toy55.2.onnx", info, flags=WITHOUT_BF16).precision == "fp32"

def test_a_cover_picture_before_the_video_does_not_hide_ten_bits(tmp_path, monkeypatch):
    """An attached picture (cover art, 8-bit JPEG) listed before a 10-bit video stream: the depth is the
    upscaled stream's, so auto keeps FP32."""
    import contextlib
    from types import SimpleNamespace

    import hrx.runtime.video as video
    from hrx.runtime.video.batch import deep_videos
    from hrx.runtime.video.batch import VideoJob

    def stream(fmt: str, disposition: int):
        return SimpleNamespace(disposition=disposition, codec_context=SimpleNamespace(format=SimpleNamespace(name=fmt)))

    container = SimpleNamespace(streams=SimpleNamespace(video=[stream("yuvj420p", 1024), stream("yuv420p10le", 0)]))
    monkeypatch.setattr(video, "open_input", lambda path: contextlib.nullcontext(container))
    assert deep_videos([VideoJob(tmp_path / "cover.mp4", tmp_path / "o.mp4")], None)


def test_gate_cache_key_follows_the_gates_method(tmp_path, monkeypatch):
    """The cached verdict is keyed by the gate's own method too: another crop side, tile merge or set of
    bundled photos measures again."""
    import shutil

    pytest.importorskip("openvino")
    path = write_toy(tmp_path / "toy.onnx")
    photos = tmp_path / "photos"
    shutil.copytree(policy.GATE_PHOTOS, photos)
    monkeypatch.setattr(policy, "GATE_PHOTOS", photos)
    keys = {policy.gate_key(path, WITH_BF16, None)}
    monkeypatch.setattr(policy, "GATE_SIDE", 64)
    keys.add(policy.gate_key(path, WITH_BF16, None))
    monkeypatch.setattr(policy, "GATE_MERGE", "crop")
    keys.add(policy.gate_key(path, WITH_BF16, None))
    first = sorted(photos.glob("*.png"))[0]
    first.write_bytes(first.read_bytes() + b"\x00")  # a bundled photo changed
    keys.add(policy.gate_key(path, WITH_BF16, None))
    assert len(keys) == 4
    assert policy.gate_key(path, WITH_BF16, None) == policy.gate_key(path, WITH_BF16, None)
