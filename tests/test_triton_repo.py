"""hrx export --batch dynamic and hrx triton-repo: ORT vs PyTorch at several batch sizes, and every generated
config parsed with tritonclient's model_config_pb2 and checked against the ONNX graph."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from typer.testing import CliRunner

import hrx
from conftest import randomize_params
from hrx.cli.main import app
from hrx.runtime.model_info import ModelInfo
from hrx.runtime.triton_repo import info_from_parameters
from tritonclient.grpc import model_config_pb2  # the triton extra, installed by scripts/setup.sh

runner = CliRunner()
TILE = 32  # 2 x hrx-t's size_multiple


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("triton_repo")
    torch.manual_seed(0)
    model = hrx.create_model("hrx-t", scale=2)
    randomize_params(model, 0.05)
    ckpt = hrx.save_model(model, tmp / "t.pt")
    out = {"dir": tmp, "ckpt": ckpt, "model": hrx.load_model(ckpt)}
    for batch in ("dynamic", "2"):
        path = tmp / f"t-{batch}.onnx"
        r = runner.invoke(app, ["export", str(ckpt), "-o", str(path), "--tile", str(TILE), "--batch", batch])
        assert r.exit_code == 0, r.output
        out[batch] = path
    return out


def _parse(folder: Path):
    return text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def _graph_dims(value) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def test_dynamic_batch_export_runs_any_batch_like_pytorch(exports):
    import onnxruntime as ort

    path = exports["dynamic"]
    proto = onnx.load(str(path))
    assert _graph_dims(proto.graph.input[0]) == ["batch", 3, TILE, TILE]
    assert _graph_dims(proto.graph.output[0]) == ["batch", 3, 2 * TILE, 2 * TILE]
    info = ModelInfo.from_onnx(path)
    assert info.extra["batch_axis"] == "dynamic" and int(info.extra["max_batch"]) >= 8 and info.batch == 1
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for batch in (1, 3, 5):
        x = rng.random((batch, 3, TILE, TILE), dtype=np.float32)
        with torch.no_grad():
            ref = exports["model"](torch.from_numpy(x)).numpy()
        got = session.run(None, {"input": x})[0]
        assert got.shape == ref.shape
        assert float(np.abs(got - ref).max()) <= 1e-4, batch
    with pytest.raises(Exception):  # the tile stays static
        session.run(None, {"input": np.zeros((1, 3, TILE + 16, TILE + 16), np.float32)})


def test_repo_for_dynamic_onnx_parses_and_matches_the_graph(exports, tmp_path):
    path = exports["dynamic"]
    r = runner.invoke(app, ["triton-repo", str(path), "-o", str(tmp_path / "repo"), "--name", "hrx_t",
                            "--instances", "3"])
    assert r.exit_code == 0, r.output
    folder = tmp_path / "repo" / "hrx_t"
    assert (folder / "1" / "model.onnx").read_bytes() == path.read_bytes()
    cfg = _parse(folder)
    proto = onnx.load(str(path))
    assert cfg.name == "hrx_t" and cfg.backend == "onnxruntime"
    assert cfg.max_batch_size == int(ModelInfo.from_onnx(path).extra["max_batch"])
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds > 0
    for tensors, values in ((cfg.input, proto.graph.input), (cfg.output, proto.graph.output)):
        assert [t.name for t in tensors] == [v.name for v in values]
        assert [list(t.dims) for t in tensors] == [_graph_dims(v)[1:] for v in values]  # batch axis is Triton's
        assert all(t.data_type == model_config_pb2.TYPE_FP32 for t in tensors)
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(3, model_config_pb2.ModelInstanceGroup.KIND_AUTO)]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert info_from_parameters(params, "config") == ModelInfo.from_onnx(path)
    assert "hrx_bisect_map" not in params and params["hrx_tile"] == str(TILE) and params["hrx_scale"] == "2"
    # a second model in the same repository keeps the first
    r = runner.invoke(app, ["triton-repo", str(exports["2"]), "-o", str(tmp_path / "repo"), "--kind", "cpu"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == ["hrx_t", "t-2"]


def test_repo_for_static_onnx_has_no_batcher(exports, tmp_path):
    path = exports["2"]
    r = runner.invoke(app, ["triton-repo", str(path), "-o", str(tmp_path), "--kind", "cpu"])
    assert r.exit_code == 0, r.output
    cfg = _parse(tmp_path / "t-2")
    proto = onnx.load(str(path))
    assert cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == _graph_dims(proto.graph.input[0]) == [2, 3, TILE, TILE]
    assert list(cfg.output[0].dims) == _graph_dims(proto.graph.output[0]) == [2, 3, 2 * TILE, 2 * TILE]
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]


def test_repo_for_engine_records_compute_capability(exports, tmp_path):
    from hrx.runtime.trt.cache import EngineRecord, write_record

    info = ModelInfo.from_onnx(exports["dynamic"])
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not a real plan, TensorRT is not needed to write the repository")
    write_record(engine, EngineRecord(
        onnx_sha256="0" * 64, onnx_path=str(exports["dynamic"]), precision="fp16", tensorrt_version="10.13",
        gpu_name="stand-in", compute_capability="8.9", input_name="input", input_shape=[-1, 3, TILE, TILE],
        output_name="output", output_shape=[-1, 3, 2 * TILE, 2 * TILE], model_info=info.to_props()))
    r = runner.invoke(app, ["triton-repo", str(engine), "-o", str(tmp_path / "repo"), "--instances", "2"])
    assert r.exit_code == 0, r.output
    folder = tmp_path / "repo" / "m"
    assert (folder / "1" / "model.plan").read_bytes() == engine.read_bytes()
    cfg = _parse(folder)
    assert cfg.backend == "tensorrt" and dict(cfg.cc_model_filenames) == {"8.9": "model.plan"}
    assert cfg.max_batch_size == int(info.extra["max_batch"]) and cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [3, TILE, TILE] and list(cfg.output[0].dims) == [3, 2 * TILE, 2 * TILE]
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_GPU)]


@pytest.mark.parametrize("args,needle", [
    (["missing.onnx"], "no such model file"),
    (["{ckpt}"], "expected an .onnx"),
    (["{onnx}", "--name", "a/b"], "model name"),
])
def test_repo_errors_are_one_line(exports, tmp_path, args, needle):
    args = [a.format(ckpt=exports["ckpt"], onnx=exports["2"]) for a in args]
    r = runner.invoke(app, ["triton-repo", *args, "-o", str(tmp_path / "repo")])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.output
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())
