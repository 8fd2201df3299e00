"""Static check of an ONNX graph against TensorRT's ONNX parser operator list.

The list (``trt_supported_ops.json``) is the Operator Support Matrix of onnx-tensorrt's
``docs/operators.md``; its ``source`` entry names the TensorRT release it was copied from.
``hrx``-domain nodes count as plugin ops (see :mod:`hrx.runtime.trt.plugins`); with
``plugins=False`` they are checked through their ONNX local function (the decomposition that
``hrx build --no-plugins`` feeds to the parser). Other local functions are checked through
their bodies, as the parser inlines them. This needs ``onnx`` only, no TensorRT.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Iterable

from hrx.export.onnx_tools import PLUGIN_DOMAIN, opset
from hrx.runtime.trt.plugins import PLUGINS

if TYPE_CHECKING:
    import onnx

_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class SupportedOps:
    source: dict[str, str]
    opset_range: tuple[int, int]
    supported: frozenset[str]
    unsupported: frozenset[str]  # listed with "N"
    restrictions: dict[str, str]


@functools.cache
def supported_ops() -> SupportedOps:
    """The operator list shipped with hrx (parsed once)."""
    text = resources.files("hrx.runtime.trt").joinpath("trt_supported_ops.json").read_text()
    data = json.loads(text)
    ops = data["operators"]
    return SupportedOps(
        source=data["source"],
        opset_range=(int(data["opset_range"][0]), int(data["opset_range"][1])),
        supported=frozenset(k for k, v in ops.items() if v["supported"]),
        unsupported=frozenset(k for k, v in ops.items() if not v["supported"]),
        restrictions={k: v["restrictions"] for k, v in ops.items() if v["restrictions"]},
    )


def _load(model):
    if isinstance(model, (str, os.PathLike)):
        import onnx

        return onnx.load(str(model), load_external_data=False)
    return model


def _subgraphs(node) -> Iterable:
    import onnx

    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _walk(nodes, functions: dict, plugins: bool, seen: set[tuple[str, str]]) -> Iterable[str]:
    """Yield one name per unsupported node (``Op`` or ``domain::Op``)."""
    table = supported_ops()
    for node in nodes:
        domain, op = node.domain, node.op_type
        key = (domain, op)
        if domain == PLUGIN_DOMAIN and plugins and op in PLUGINS:
            continue  # a TensorRT plugin
        if key in functions and not (domain in _DEFAULT_DOMAINS and op in table.supported):
            if key not in seen:  # the parser inlines the local function: check its body once
                seen.add(key)
                yield from _walk(functions[key].node, functions, plugins, seen)
            continue
        if domain in _DEFAULT_DOMAINS:
            if op not in table.supported:
                yield op
        else:
            yield f"{domain}::{op}"
        for g in _subgraphs(node):
            yield from _walk(g.node, functions, plugins, seen)


def unsupported_ops(model: onnx.ModelProto | str | os.PathLike, plugins: bool = True) -> list[str]:
    """Sorted names of the ops TensorRT's ONNX parser cannot take in ``model`` (path or ModelProto).

    ``hrx::SelectiveScan``/``hrx::MoETop1`` count as supported plugin ops when ``plugins`` is
    true; any other non-default domain without a local function is unsupported.
    """
    model = _load(model)
    functions = {(f.domain, f.name): f for f in model.functions}
    return sorted(set(_walk(model.graph.node, functions, plugins, set())))


def opset_problems(model: onnx.ModelProto | str | os.PathLike) -> list[str]:
    """The default-domain opset, if outside the range the operator list was written for."""
    model = _load(model)
    lo, hi = supported_ops().opset_range
    version = opset(model)  # 0: the model imports no default domain, nothing to check
    if version and not lo <= version <= hi:
        return [f"opset {version} is outside TensorRT's supported range {lo}-{hi}"]
    return []
