"""Load a third-party checkpoint (``.pth``, ``.pt``, ``.ckpt``, ``.safetensors``) through spandrel.

Weights only: the file is read by hrx (``safetensors`` or ``torch.load(weights_only=True)``), never by
spandrel's own loader (which would accept TorchScript and a wider unpickler); spandrel only sees the
resulting dict of tensors, detects the architecture and builds the model.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from hrx.errors import CheckpointError, MissingDependencyError
from hrx.spandrel_models.spandrel_import import announce, import_spandrel, spandrel_problem

SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")


def read_state_dict(path: Path) -> dict:
    """The tensors of ``path``, weights-only (:func:`hrx.checkpoint.load_weights`). Raises
    :class:`CheckpointError` with one line."""
    from hrx.checkpoint import load_weights

    data, _ = load_weights(path, "the pickle holds more than tensors: save its state_dict only, or convert "
                                 "it to .safetensors")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a {type(data).__name__}, not a state dict")
    return data


def known_architectures() -> list[str]:
    """spandrel's architecture ids (empty when spandrel is unavailable)."""
    sp = import_spandrel()
    if sp is None:
        return []
    return [a.architecture.id for a in sp.MAIN_REGISTRY.architectures("insertion")]


def load_spandrel_model(ref: str | os.PathLike, hrx_archs: list[str] | None = None):
    """A :class:`~hrx.spandrel_models.model.SpandrelModel` (eval mode) for a checkpoint spandrel recognises."""
    from hrx.spandrel_models.model import SpandrelModel

    path = Path(ref)
    hrx_known = f"HRX architectures: {', '.join(hrx_archs)}; " if hrx_archs else ""
    sp = import_spandrel()
    if sp is None:
        raise MissingDependencyError(f"{path}: not an HRX checkpoint, and third-party checkpoints need spandrel: "
                                     f"{spandrel_problem()}")
    state = read_state_dict(path)
    state = sp.canonicalize_state_dict(state)
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not an HRX checkpoint and not a state dict of tensors")
    try:
        descriptor = sp.MAIN_REGISTRY.load(state)
    except sp.UnsupportedModelError:
        raise CheckpointError(f"{path}: not an HRX checkpoint and not an architecture spandrel "
                              f"{sp.__version__} recognises ({hrx_known}spandrel: {', '.join(known_architectures())})") from None
    except Exception as e:  # noqa: BLE001 - a detected architecture whose weights do not fit
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: spandrel could not build the model from these weights ({first[:200]})") from None
    if not isinstance(descriptor, sp.ImageModelDescriptor):
        raise CheckpointError(f"{path}: {descriptor.architecture.name} is a {descriptor.purpose} model (needs a mask); "
                              "hrx deploys image-to-image models only")
    announce()
    model = SpandrelModel(descriptor)
    model.checkpoint_extra = {}
    return model.eval()
