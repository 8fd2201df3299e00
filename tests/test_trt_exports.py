"""Real ``hrx-t`` exports (both ops modes) against TensorRT's parser contract, without TensorRT.

The exports are the session's ``hrx_t_x2_native`` / ``hrx_t_x2_plugin`` (tile 32, batch 1): exporting
takes most of this file's time.
"""
from __future__ import annotations

import onnx
import pytest

from hrx.runtime.trt import ops, plugins


@pytest.fixture(scope="module")
def exports(hrx_t_x2_native, hrx_t_x2_plugin) -> dict[str, onnx.ModelProto]:
    return {mode: onnx.load(str(result.path)) for mode, result in (("native", hrx_t_x2_native),
                                                                     ("plugin", hrx_t_x2_plugin))}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["native", "plugin"])
def test_every_op_is_on_tensorrts_list(exports, mode):
    model = exports[mode]
    assert ops.unsupported_ops(model) == [], f"{mode} export uses ops TensorRT's ONNX parser lacks"
    assert ops.opset_problems(model) == []


@pytest.mark.slow
def test_plugin_export_decomposition_is_on_tensorrts_list(exports):
    """``hrx build --no-plugins`` feeds the local functions' bodies to the parser."""
    assert ops.unsupported_ops(exports["plugin"], plugins=False) == []


@pytest.mark.slow
def test_native_export_has_no_custom_domain(exports):
    model = exports["native"]
    assert plugins.plugin_nodes(model) == []
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}


@pytest.mark.slow
def test_plugin_export_meets_the_parser_contract(exports):
    model = exports["plugin"]
    nodes = plugins.plugin_nodes(model)
    assert {n.op_type for n in nodes} == {"SelectiveScan", "MoETop1"}
    assert plugins.contract_problems(model) == []
    for n in nodes:
        attrs = {a.name: a for a in n.attribute}
        assert attrs["plugin_namespace"].type == onnx.AttributeProto.STRING and attrs["plugin_namespace"].s == b"hrx"
        assert attrs["plugin_version"].type == onnx.AttributeProto.STRING and attrs["plugin_version"].s == b"1"
        if n.op_type == "SelectiveScan":
            assert attrs["chunk"].type == onnx.AttributeProto.INT and attrs["chunk"].i > 0
        assert "aot" not in attrs


@pytest.mark.slow
def test_plugin_export_parses_as_plugins_or_as_decomposition(exports):
    model = exports["plugin"]
    stripped = plugins.strip_plugin_functions(model)
    assert [f.name for f in stripped.functions if f.domain == "hrx"] == []
    assert len(plugins.plugin_nodes(stripped)) == len(plugins.plugin_nodes(model))
    assert len(model.functions) == 2, "stripping must not touch the original"
    import onnx.inliner

    inlined = onnx.inliner.inline_local_functions(model)
    assert plugins.plugin_nodes(inlined) == []
    assert ops.unsupported_ops(inlined) == []
