"""Model registry: architecture names -> (model class, config class, preset kwargs).

``create_model(arch, scale=4, in_channels=3, **overrides)`` is the single entry point; the
architecture files register their presets with :func:`register_model`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    name: str
    model_cls: type[nn.Module]
    config_cls: type
    preset: dict[str, Any]
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, model_cls: type[nn.Module], config_cls: type, description: str = "", **preset: Any) -> None:
    _REGISTRY[name] = ModelEntry(name, model_cls, config_cls, dict(preset), description)


def _load_builtin() -> None:
    # importing the architecture modules registers their presets
    from hrx.models import presets  # noqa: F401


def list_models() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_entry(arch: str) -> ModelEntry:
    _load_builtin()
    if arch not in _REGISTRY:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[arch]


def build_config(arch: str, **overrides: Any) -> Any:
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
