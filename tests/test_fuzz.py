"""Fuzzing what HRX reads from files (hypothesis, derandomized so CI sees the same examples every run):
malformed images into ``hrx upscale``, ONNX files with corrupted metadata into ``hrx upscale`` and ``hrx
build`` (TensorRT stand-in), truncated and corrupted checkpoints into ``hrx upscale`` / ``hrx export``,
corrupted engine records into ``hrx triton-repo`` (which reads them without TensorRT).

Examples per target are few (12; 8 for checkpoint configs) to keep the whole suite's time: the file
runs in about 15 s here (most of it imports and fixtures). Every example either succeeds with whole outputs, or fails with: a non-zero exit, errors on one line each
(``error: ...``, no traceback), the inputs unchanged, and no partial output (no temporary file, no output
file left by the failing command)."""
from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

import hrx
from hrx.cli.main import app
from runtime_support import write_toy

runner = CliRunner()
FUZZ = settings(max_examples=12, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


SEEDS = {"png": _png(), "jpg": _jpeg()}


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """``data`` truncated, with bytes overwritten, or with junk inserted."""
    how = draw(st.sampled_from(["truncate", "overwrite", "insert"]))
    if how == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    out = bytearray(data)
    if how == "overwrite":
        for _ in range(draw(st.integers(1, 8))):
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        return bytes(out)
    at = draw(st.integers(0, len(out)))
    return bytes(out[:at]) + draw(st.binary(min_size=1, max_size=32)) + bytes(out[at:])


def _snapshot(*paths: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in paths}


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _assert_clean_failure(result, inputs: dict[Path, bytes], work: Path, outputs: list[Path]) -> None:
    """A non-zero exit, every line of the output an ``error:`` / ``warning:`` line (no traceback), the first
    error naming one of the input files, the inputs unchanged, no temporary file and none of ``outputs``."""
    text = result.output
    assert result.exit_code != 0, text
    assert "Traceback" not in text, text
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and all(line.startswith(("error: ", "warning: ")) for line in lines), text
    assert lines[-1].startswith("error: "), text
    first = next(line for line in lines if line.startswith("error: "))
    assert any(str(p) in first for p in inputs), text
    assert _snapshot(*inputs) == inputs
    assert _leftovers(work) == []
    assert not [p for p in outputs if p.exists()], text


@pytest.fixture(scope="module", autouse=True)
def _torch_threads():
    """The PyTorch runs pass --threads 1 (one thread is fastest for these tiny images on a busy machine),
    which sets PyTorch's process-wide pool: restored after the module."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    return write_toy(tmp_path_factory.mktemp("fuzz") / "toy.onnx", tile=16, batch=2)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = hrx.create_model("hrx-t", scale=2)
    return {suffix: hrx.save_model(model, tmp / f"t{suffix}").read_bytes() for suffix in (".pt", ".safetensors")}


@FUZZ
@given(kind=st.sampled_from(sorted(SEEDS)), data=st.data())
def test_malformed_images(toy, kind, data):
    blob = data.draw(mutated(SEEDS[kind]))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        src = work / f"in.{kind}"
        src.write_bytes(blob)
        inputs = _snapshot(src)
        out = work / "out" / "in.png"
        result = runner.invoke(app, ["upscale", str(src), "-o", str(work / "out"), "--engine", str(toy), "-q",
                                     "--workers", "1", "--max-pixels", "100000", "--backend", "onnxrt-cpu"])
        if result.exit_code == 0:  # a change the decoder tolerates: a whole output of the right size
            with Image.open(src) as im:
                size = im.size
            with Image.open(out) as im:
                im.load()
                assert im.size == (2 * size[0], 2 * size[1])
            assert _snapshot(src) == inputs and _leftovers(work) == []
            return
        _assert_clean_failure(result, inputs, work, [out])
        assert result.output.splitlines()[0].startswith(f"error: {src}: ")


INT_KEYS = ("scale", "in_channels", "out_channels", "tile", "batch", "size_multiple", "tile_overlap", "min_size",
            "max_batch")
VALUES = st.one_of(st.integers(-2 ** 70, 2 ** 70).map(str), st.integers(-3, 40).map(str), st.text(max_size=10),
                   st.sampled_from(["", "nan", "1e9", "0x10", " 3 ", "-0", "2.0", "9" * 5000]))


def _corrupt_onnx(toy: Path, work: Path, key: str, value: str) -> Path:
    model = onnx.load(str(toy))
    props = {p.key: p.value for p in model.metadata_props}
    props[key] = value
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    path = work / "bad.onnx"
    onnx.save(model, str(path))
    return path


@FUZZ
@given(key=st.sampled_from(INT_KEYS), value=VALUES)
def test_corrupted_onnx_metadata_into_upscale(toy, key, value):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = _corrupt_onnx(toy, work, key, value)
        src = work / "a.png"
        src.write_bytes(SEEDS["png"])
        inputs = _snapshot(model, src)
        out = work / "out" / "a.png"
        result = runner.invoke(app, ["upscale", str(src), "-o", str(work / "out"), "--engine", str(model), "-q",
                                     "--workers", "1"])
        if result.exit_code == 0:  # a value the model still runs with
            with Image.open(out) as im:
                im.load()
            assert _snapshot(*inputs) == inputs and _leftovers(work) == []
            return
        _assert_clean_failure(result, inputs, work, [out])


@pytest.fixture
def stand_in_tensorrt(monkeypatch):
    """The TensorRT 10.12 stand-in of test_trt_build_fake (no GPU, no TensorRT needed)."""
    from test_trt_build_fake import GPU, make_fake_trt

    from hrx.runtime.trt import env, plugins

    state: dict = {"registered": 0, "weak_calls": [], "style": "10"}
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(state, style="10"))
    monkeypatch.setattr(env, "gpu_info", lambda: GPU)
    monkeypatch.setattr(env, "triton_problem", lambda: None)
    monkeypatch.setattr(plugins, "register_plugins", lambda: None)
    return state


@FUZZ
@given(key=st.sampled_from(INT_KEYS), value=VALUES)
def test_corrupted_onnx_metadata_into_build(stand_in_tensorrt, toy, key, value):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = _corrupt_onnx(toy, work, key, value)
        inputs = _snapshot(model)
        engine = work / "bad.engine"
        result = runner.invoke(app, ["build", str(model), "-o", str(engine)])
        if result.exit_code == 0:  # a pair that belongs together
            from hrx.runtime.trt.cache import read_record

            assert read_record(engine).engine_sha256 == hrx.paths.file_sha256(engine)
            assert _snapshot(*inputs) == inputs and _leftovers(work) == []
            return
        _assert_clean_failure(result, inputs, work, [engine, engine.with_name(engine.name + ".json")])


@FUZZ
@given(suffix=st.sampled_from([".pt", ".safetensors"]), command=st.sampled_from(["upscale", "export"]),
       data=st.data())
def test_truncated_checkpoints(checkpoints, suffix, command, data):
    blob = checkpoints[suffix]
    blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = work / f"cut{suffix}"
        ckpt.write_bytes(blob)
        src = work / "a.png"
        src.write_bytes(SEEDS["png"])
        inputs = _snapshot(ckpt, src)
        if command == "upscale":
            outputs = [work / "out" / "a.png"]
            args = ["upscale", str(src), "-o", str(work / "out"), "--model", str(ckpt), "-q", "--threads", "1"]
        else:
            outputs = [work / "cut.onnx"]
            args = ["export", str(ckpt), "-o", str(outputs[0]), "--tile", "32"]
        result = runner.invoke(app, args)
        _assert_clean_failure(result, inputs, work, outputs)
        assert str(ckpt) in result.output.splitlines()[-1]


CONFIG_VALUES = st.one_of(st.integers(-2 ** 40, 2 ** 40), st.integers(-2, 3), st.floats(allow_nan=True),
                          st.text(max_size=6), st.none(), st.lists(st.integers(-5, 5), max_size=3))


@settings(FUZZ, max_examples=8)  # each example builds a model: the slowest target
@given(data=st.data())
def test_corrupted_checkpoint_configs(checkpoints, data):
    """Config values of a checkpoint replaced (widths of 2**40, negative depths, text for numbers)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        good = work / "good.pt"
        good.write_bytes(checkpoints[".pt"])
        saved = torch.load(good, weights_only=True)
        key = data.draw(st.sampled_from(sorted(saved["config"])))
        saved["config"][key] = data.draw(CONFIG_VALUES)
        ckpt = work / "bad.pt"
        torch.save(saved, ckpt)
        src = work / "a.png"
        src.write_bytes(SEEDS["png"])
        inputs = _snapshot(ckpt, src)
        out = work / "out" / "a.png"
        result = runner.invoke(app, ["upscale", str(src), "-o", str(work / "out"), "--model", str(ckpt), "-q",
                                     "--tile", "32", "--threads", "1"])
        if result.exit_code == 0:  # a value this architecture accepts with the same weights
            with Image.open(out) as im:
                im.load()
            assert _snapshot(*inputs) == inputs and _leftovers(work) == []
            return
        _assert_clean_failure(result, inputs, work, [out])


RECORD_VALUES = st.one_of(st.integers(-2 ** 70, 2 ** 70), st.text(max_size=8), st.none(), st.booleans(),
                          st.lists(st.integers(-2 ** 40, 2 ** 40), max_size=9), st.floats(allow_nan=True),
                          st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3))


@FUZZ
@given(data=st.data())
def test_corrupted_engine_records(toy, data):
    from hrx.interface import ModelInfo
    from hrx.runtime.trt.cache import EngineRecord

    info = ModelInfo.from_onnx(toy)
    record = EngineRecord(onnx_sha256="0" * 64, onnx_path=str(toy), precision="fp16", tensorrt_version="10.12.0",
                          gpu_name="NVIDIA L4", compute_capability="8.9", input_name="input",
                          input_shape=[2, 3, 16, 16], output_name="output", output_shape=[2, 3, 32, 32],
                          model_info=info.to_props(), engine_sha256="")
    doc = json.loads(record.to_json())
    how = data.draw(st.sampled_from(["value", "info", "truncate"]))
    if how == "value":
        doc[data.draw(st.sampled_from(sorted(doc)))] = data.draw(RECORD_VALUES)
        text = json.dumps(doc)
    elif how == "info":
        doc["model_info"][data.draw(st.sampled_from(INT_KEYS[:-1]))] = data.draw(VALUES)
        text = json.dumps(doc)
    else:
        text = record.to_json()
        text = text[:data.draw(st.integers(0, len(text) - 1))]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        engine = work / "m.engine"
        engine.write_bytes(b"a serialized engine")
        (work / "m.engine.json").write_text(text)
        inputs = _snapshot(engine, work / "m.engine.json")
        repo = work / "repo"
        result = runner.invoke(app, ["triton-repo", str(engine), "-o", str(repo)])
        if result.exit_code == 0:
            assert (repo / "m" / "config.pbtxt").is_file() and _snapshot(*inputs) == inputs
            return
        _assert_clean_failure(result, inputs, work, [repo / "m" / "config.pbtxt"])
        assert "m.engine" in result.output.splitlines()[-1]
