"""hrx build of a `hrx export --batch dynamic` model: one optimisation profile over the batch axis (min/opt/max),
recorded in the engine record, and `hrx triton-repo` of that engine. Against the TensorRT stand-ins of
test_trt_build_fake (TensorRT cannot be installed here): this checks what HRX asks TensorRT for, not
TensorRT's behaviour."""
from __future__ import annotations

import sys

import onnx
import pytest
from google.protobuf import text_format

from tritonclient.grpc import model_config_pb2
from typer.testing import CliRunner

from hrx.cli.main import app
from hrx.runtime.trt import env, plugins
from test_trt_build_fake import GPU, _native_model, make_fake_trt

runner = CliRunner()


def _dynamic(model: onnx.ModelProto, max_batch: int = 64) -> onnx.ModelProto:
    """The stand-in graph with a symbolic batch axis and the metadata of a dynamic export."""
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    model.metadata_props.add(key="batch_axis", value="dynamic")
    model.metadata_props.add(key="max_batch", value=str(max_batch))
    return model


@pytest.fixture(params=["10", "11"])
def fake(request, monkeypatch, tmp_path):
    state: dict = {"registered": 0, "weak_calls": [], "style": request.param, "profiles": [], "added": []}
    trt = make_fake_trt(state, style=request.param)

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            self.shapes[name] = (list(low), list(opt), list(high))

    class Builder(trt.Builder):
        def create_optimization_profile(self):
            state["profiles"].append(Profile())
            return state["profiles"][-1]

        def create_builder_config(self):
            config = super().create_builder_config()
            config.add_optimization_profile = lambda p: state["added"].append(p) or len(state["added"]) - 1
            return config

    class Parser(trt.OnnxParser):  # TensorRT reports a symbolic dimension as -1
        def parse(self, data, path):
            ok = super().parse(data, path)
            for t in self.network.inputs + self.network.outputs:
                t.shape = tuple(-1 if d == 0 else d for d in t.shape)
            return ok

    trt.Builder, trt.OnnxParser = Builder, Parser
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(env, "gpu_info", lambda: GPU)
    monkeypatch.setattr(env, "triton_problem", lambda: None)
    monkeypatch.setattr(plugins, "register_plugins", lambda: state.__setitem__("registered", 1))
    state["dynamic"] = tmp_path / "dyn.onnx"
    onnx.save(_dynamic(_native_model()), state["dynamic"])
    state["static"] = tmp_path / "static.onnx"
    onnx.save(_native_model(), state["static"])
    return state


def test_dynamic_batch_gets_the_default_profile_and_record(fake, tmp_path):
    from hrx.runtime.trt.builder import build_engine
    from hrx.runtime.trt.cache import read_record

    report = build_engine(fake["dynamic"], tmp_path / "d.engine")
    assert len(fake["profiles"]) == 1 and fake["added"] == fake["profiles"]
    assert fake["profiles"][0].shapes == {"input": ([1, 4, 8, 8], [8, 4, 8, 8], [32, 4, 8, 8])}
    record = read_record(tmp_path / "d.engine")
    assert record.input_shape == [-1, 4, 8, 8] and record.output_shape[0] == -1
    assert (record.model_info["max_batch"], record.model_info["batch_profile"]) == ("32", "1,8,32")
    assert any("1/8/32" in n for n in report.notes)


def test_batch_profile_option_and_triton_repo_of_the_engine(fake, tmp_path):
    engine = tmp_path / "d.engine"
    r = runner.invoke(app, ["build", str(fake["dynamic"]), "-o", str(engine), "--batch-profile", "2,4,16"])
    assert r.exit_code == 0, r.output
    assert fake["profiles"][0].shapes == {"input": ([2, 4, 8, 8], [4, 4, 8, 8], [16, 4, 8, 8])}
    r = runner.invoke(app, ["triton-repo", str(engine), "-o", str(tmp_path / "repo"), "--name", "hrx"])
    assert r.exit_code == 0, r.output
    cfg = text_format.Parse((tmp_path / "repo" / "hrx" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert cfg.backend == "tensorrt" and cfg.max_batch_size == 16 and cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [4, 8, 8] and list(cfg.output[0].dims) == [4, 8, 8]
    assert dict(cfg.cc_model_filenames) == {GPU.compute_capability: "model.plan"}
    assert cfg.parameters["hrx_batch_profile"].string_value == "2,4,16"


@pytest.mark.parametrize("which,profile,needle", [
    ("dynamic", "4,2,8", "need 1 <= MIN <= OPT <= MAX"),
    ("dynamic", "1,8,128", "above the export's max_batch 64"),
    ("dynamic", "1,8", "expected MIN,OPT,MAX"),
    ("static", "1,1,1", "needs a dynamic batch axis"),
])
def test_bad_profiles_are_one_line_and_write_nothing(fake, tmp_path, which, profile, needle):
    engine = tmp_path / "x.engine"
    r = runner.invoke(app, ["build", str(fake[which]), "-o", str(engine), "--batch-profile", profile])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and needle in lines[-1] and lines[-1].startswith("error:"), r.output
    assert not engine.exists() and not (tmp_path / "x.engine.json").exists()


def test_only_the_batch_may_be_dynamic(fake, tmp_path):
    from hrx.errors import HRXError
    from hrx.runtime.trt.builder import build_engine

    model = _dynamic(_native_model())
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    onnx.save(model, tmp_path / "h.onnx")
    with pytest.raises(HRXError, match="only the batch"):
        build_engine(tmp_path / "h.onnx", tmp_path / "h.engine")
