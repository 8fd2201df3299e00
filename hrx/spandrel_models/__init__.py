"""Third-party super-resolution checkpoints (ESRGAN, Real-ESRGAN Compact, SPAN, SwinIR, ...) through spandrel.

``load_spandrel_model(path)`` reads a ``.pth`` / ``.pt`` / ``.ckpt`` / ``.safetensors`` weights-only, lets
spandrel recognise the architecture and returns a :class:`SpandrelModel` that export, verify,
calibrate, build and upscale treat like an HRX model. ``hrx.load_model`` dispatches here for any
file that is not an HRX checkpoint. spandrel is imported through :mod:`hrx.spandrel_models.spandrel_import`
(works without a usable torchvision).
"""
from __future__ import annotations

from hrx.lazy import lazy_getattr

_LAZY = {
    "load_spandrel_model": "hrx.spandrel_models.loader",
    "known_architectures": "hrx.spandrel_models.loader",
    "read_state_dict": "hrx.spandrel_models.loader",
    "SpandrelModel": "hrx.spandrel_models.model",
    "overlap_rule": "hrx.spandrel_models.model",
    "fuse_reparam": "hrx.spandrel_models.fuse",
    "import_spandrel": "hrx.spandrel_models.spandrel_import",
    "spandrel_problem": "hrx.spandrel_models.spandrel_import",
}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
