"""The registry is one-way: it imports no model module, and every preset it lists builds."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import hrx
from hrx.registry import get_entry, register_model


def test_registry_imports_no_model_module():
    code = ("import sys, hrx.registry as r; names = r.list_models(); "
            "loaded = [m for m in sys.modules if m.startswith('hrx.models.') and m != 'hrx.models.presets' "
            "or m.startswith('hrx.blocks')]; print(names, loaded); assert not loaded, loaded; "
            "assert {'hrx-t', 'hrx-s', 'hydra-t', 'hydra-base'} <= set(names), names")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("arch", hrx.list_models())
def test_every_preset_resolves(arch):
    entry = get_entry(arch)
    assert entry.description and issubclass(entry.model_cls, torch.nn.Module)
    assert entry.config_cls.__name__.endswith("Config")


def test_register_model_adds_an_entry():
    from dataclasses import dataclass

    @dataclass
    class NetConfig:
        scale: int = 2
        in_channels: int = 3
        width: int = 4

    class Net(torch.nn.Module):
        def __init__(self, cfg):
            super().__init__()
            self.config = cfg
            self.conv = torch.nn.Conv2d(cfg.in_channels, cfg.width, 3)

    register_model("test-net", Net, NetConfig, "stand-in", width=5)
    try:
        model = hrx.create_model("test-net", scale=2)
        assert model.conv.out_channels == 5 and model.arch == "test-net"
        assert "test-net" in hrx.list_models()
    finally:
        from hrx import registry
        registry._REGISTRY.pop("test-net")


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(KeyError, match="hydra-t"):
        get_entry("nope")
