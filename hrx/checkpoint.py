"""Checkpoints: architecture name + full config + weights, loadable without arbitrary pickle.

Two formats, chosen by extension on save and by content on load:

* ``*.safetensors``: weights as tensors, ``hrx_arch`` / ``hrx_config`` / ``hrx_version`` in the
  header metadata.
* anything else (``*.pt``): ``torch.save`` of a plain dict of tensors, strings and numbers, loaded
  with ``torch.load(weights_only=True)``. A pickle that needs arbitrary code is refused.

Bundled model names (``default-x2``, ...) resolve to files shipped in ``hrx/weights``: the checkpoint
(``NAME.safetensors``) and its ONNX export (``NAME.onnx``, static tile :data:`BUNDLED_TILE`, written by
``python -m hrx.export.bundle``), which the base install runs without PyTorch.

PyTorch is imported inside the functions that read or write weights, so resolving a bundled name needs
none of it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hrx.errors import CheckpointError, one_line
from hrx.paths import atomic_write

if TYPE_CHECKING:
    import torch
    from torch import nn

class NotHRXCheckpoint(CheckpointError):
    """A readable weights file without HRX's header: :func:`load_model` hands it to :mod:`hrx.spandrel_models`."""


FORMAT = "hrx-checkpoint"
FORMAT_VERSION = 1
WEIGHTS_DIR = Path(__file__).parent / "weights"


BUNDLED_TILE = 128  # static tile of the shipped ONNX files: the runtime's CPU default tile


def bundled_models() -> dict[str, Path]:
    """Names of the models shipped inside the package -> their files."""
    if not WEIGHTS_DIR.is_dir():
        return {}
    return {p.name.split(".")[0]: p for p in sorted(WEIGHTS_DIR.glob("*.safetensors"))}


def bundled_onnx(name: str) -> Path:
    """Where the shipped ONNX export of bundled model ``name`` lives (it may be absent)."""
    return WEIGHTS_DIR / f"{name}.onnx"


def resolve_checkpoint(ref: str | os.PathLike) -> Path:
    """A path, or the name of a bundled model. Raises :class:`CheckpointError` if neither."""
    path = Path(ref)
    if path.is_file():
        return path
    bundled = bundled_models()
    if str(ref) in bundled:
        return bundled[str(ref)]
    if path.exists():
        raise CheckpointError(f"{ref}: is a directory, not a checkpoint file")
    hint = f" (bundled models: {', '.join(bundled)})" if bundled else ""
    raise CheckpointError(f"{ref}: no such checkpoint file or bundled model{hint}")


def _version() -> str:
    from hrx import __version__

    return __version__


def save_model(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (arch, config, weights) atomically to ``path``."""
    from hrx.registry import model_config

    path = Path(path)
    arch = getattr(model, "arch", None)
    if arch is None:
        raise CheckpointError("model has no registered architecture name; build it with hrx.create_model")
    config = model_config(model)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"hrx_format": FORMAT, "hrx_arch": arch, "hrx_config": json.dumps(config), "hrx_version": _version(),
            "hrx_extra": json.dumps(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        import torch

        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, tmp, metadata=meta)
        else:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "arch": arch, "config": config,
                        "hrx_version": meta["hrx_version"], "extra": extra or {}, "state_dict": state}, tmp)

    return atomic_write(path, write)


def read_checkpoint(ref: str | os.PathLike) -> tuple[str, dict[str, Any], dict[str, torch.Tensor], dict[str, Any]]:
    """``(arch, config, state_dict, extra)`` from a checkpoint path or bundled name."""
    path = resolve_checkpoint(ref)
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CheckpointError(f"{path}: file is empty or truncated, not an HRX checkpoint")
    data, meta = load_weights(path, "re-save it with hrx.save_model")
    if meta is None:
        return _read_torch(path, data)
    return _read_safetensors(path, data, meta)


def load_weights(path: Path, fix: str) -> tuple[Any, dict[str, str] | None]:
    """Read ``path`` weights-only, the one reader of HRX and third-party checkpoints: a PyTorch pickle through
    ``torch.load(weights_only=True)`` -> ``(data, None)``, else a safetensors file -> ``(tensors, its
    metadata)``. A pickle that would run code is refused, ``fix`` saying what to do; any failure is one
    :class:`CheckpointError` line naming the file."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        import torch

        try:
            return torch.load(path, map_location="cpu", weights_only=True), None
        except Exception as e:  # noqa: BLE001 - torch raises many kinds here
            text = str(e)
            if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
                raise CheckpointError(f"{path}: refused: loading it would run arbitrary pickle code; {fix}") from None
            raise CheckpointError(f"{path}: not a readable checkpoint ({_first_line(e)})") from None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: not a readable checkpoint, neither a PyTorch pickle nor a safetensors file "
                              f"({_first_line(e)})") from None


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _read_torch(path: Path, data: Any):
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise NotHRXCheckpoint(f"{path}: not an HRX checkpoint (no '{FORMAT}' header); "
                              "convert plain state dicts with hrx.save_model(model, path)")
    return _checked(path, data.get("arch"), data.get("config"), data.get("state_dict"), data.get("extra") or {})


def _read_safetensors(path: Path, state: dict, meta: dict[str, str]):
    if meta.get("hrx_format") != FORMAT:
        raise NotHRXCheckpoint(f"{path}: safetensors file without HRX metadata (arch/config); not an HRX checkpoint")
    parsed = {}
    for key, default in (("hrx_config", None), ("hrx_extra", "{}")):
        try:
            parsed[key] = json.loads(meta.get(key, default) if meta.get(key, default) is not None else "null")
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: metadata key {key!r} is not JSON ({e.msg})") from e
    return _checked(path, meta.get("hrx_arch"), parsed["hrx_config"], state, parsed["hrx_extra"])


CONFIG_INT_LIMIT = 4096  # the largest width, depth or count of an HRX preset is 64: a value over this is a corrupt file


def _checked(path: Path, arch: Any, config: Any, state: Any, extra: Any):
    """The checkpoint's fields, of the types and sizes a real checkpoint has; one line naming the file and
    key otherwise (a corrupted or hostile file must not build a model of absurd size)."""
    import torch

    if not isinstance(arch, str) or not arch:
        raise CheckpointError(f"{path}: key 'arch' is missing or not text")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: key 'config' is missing or not a mapping")
    for key, value in config.items():
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if isinstance(v, bool) or v is None or isinstance(v, str):
                continue
            if not isinstance(v, (int, float)) or not abs(v) <= CONFIG_INT_LIMIT or v != v:
                raise CheckpointError(f"{path}: config key {key!r} = {str(value)[:40]} is out of range")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in state.items()):
        raise CheckpointError(f"{path}: key 'state_dict' is missing or not a mapping of tensors")
    if not isinstance(extra, dict):
        raise CheckpointError(f"{path}: key 'extra' is not a mapping")
    return arch, dict(config), state, dict(extra)


def load_model(ref: str | os.PathLike, expect_arch: str | None = None) -> nn.Module:
    """Rebuild the model recorded in a checkpoint (eval mode). ``expect_arch`` guards against
    loading the wrong architecture. A weights file that is not an HRX checkpoint goes to spandrel
    (:func:`hrx.spandrel_models.load_spandrel_model`: ESRGAN, Compact, SPAN, SwinIR, ...)."""
    from hrx.registry import get_entry

    try:
        arch, config, state, extra = read_checkpoint(ref)
    except NotHRXCheckpoint:
        from hrx.spandrel_models.loader import load_spandrel_model

        model = load_spandrel_model(resolve_checkpoint(ref), hrx_archs=__import__("hrx").list_models())
        if expect_arch is not None and model.arch != expect_arch:
            raise CheckpointError(f"{ref}: checkpoint is architecture {model.arch!r}, expected {expect_arch!r}") from None
        return model
    if expect_arch is not None and arch != expect_arch:
        raise CheckpointError(f"{ref}: checkpoint is architecture {arch!r}, expected {expect_arch!r}")
    try:
        entry = get_entry(arch)
    except KeyError:
        raise CheckpointError(f"{ref}: unknown architecture {arch!r} (this hrx knows: "
                              f"{', '.join(__import__('hrx').list_models())})") from None
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    try:
        model = entry.model_cls(entry.config_cls(**config))
    except (TypeError, ValueError, AssertionError, RuntimeError, KeyError, ZeroDivisionError) as e:
        raise CheckpointError(f"{ref}: config does not fit architecture {arch!r}: {one_line(e)}") from e
    model.arch = arch
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a tensor of the wrong shape
        raise CheckpointError(f"{ref}: weights do not match architecture {arch!r} ({one_line(e, 200)})") from e
    if missing or unexpected:
        raise CheckpointError(f"{ref}: weights do not match architecture {arch!r} "
                              f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    model.checkpoint_extra = extra
    return model.eval()
