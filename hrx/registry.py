"""Model registry: architecture names -> (model class, config class, preset kwargs).

``create_model(arch, scale=4, in_channels=3, **overrides)`` is the single entry point. Imports run
one way: the registry imports no model module. The built-in presets are plain data
(:mod:`hrx.models.presets`) naming their classes as ``"module:Name"``, imported when a model is
built; other architectures (third-party loaders) add entries with :func:`register_model`.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

from torch import nn

from hrx.models.presets import PRESETS



def _resolve(ref: Any) -> type:
    if isinstance(ref, str):
        module, _, name = ref.partition(":")
        return getattr(importlib.import_module(module), name)
    return ref


@dataclass(frozen=True)
class ModelEntry:
    name: str
    model_ref: Any  # class or "module:Name"
    config_ref: Any
    preset: dict[str, Any]
    description: str

    @property
    def model_cls(self) -> type[nn.Module]:
        """The model class (imported on first use)."""
        return _resolve(self.model_ref)

    @property
    def config_cls(self) -> type:
        """The config dataclass (imported on first use)."""
        return _resolve(self.config_ref)


_REGISTRY: dict[str, ModelEntry] = {
    name: ModelEntry(name, p["classes"][0], p["classes"][1], dict(p["config"]), p["description"])
    for name, p in PRESETS.items()
}


def register_model(name: str, model_cls: type[nn.Module] | str, config_cls: type | str, description: str = "",
                   **preset: Any) -> None:
    """Add (or replace) an architecture preset; classes may be given as ``"module:Name"``."""
    _REGISTRY[name] = ModelEntry(name, model_cls, config_cls, dict(preset), description)


def list_models() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_REGISTRY)


def get_entry(arch: str) -> ModelEntry:
    """The registry entry of ``arch``; KeyError naming the known ones otherwise."""
    if arch not in _REGISTRY:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[arch]


def build_config(arch: str, **overrides: Any) -> Any:
    """``arch``'s preset config with ``overrides`` applied; unknown fields raise."""
    entry = get_entry(arch)
    fields = {f.name for f in dataclasses.fields(entry.config_cls)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"{arch}: unknown config fields {sorted(unknown)}")
    return entry.config_cls(**dict(entry.preset, **overrides))


def create_model(arch: str, scale: int = 4, in_channels: int = 3, **overrides: Any) -> nn.Module:
    """Build a model by registered name, e.g. ``create_model("hrx-s", scale=2)``."""
    cfg = build_config(arch, scale=scale, in_channels=in_channels, **overrides)
    model = get_entry(arch).model_cls(cfg)
    model.arch = arch
    return model


def model_config(model: nn.Module) -> dict[str, Any]:
    """The full config of a registered model as a plain dict (JSON-friendly)."""
    cfg = dataclasses.asdict(model.config)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
