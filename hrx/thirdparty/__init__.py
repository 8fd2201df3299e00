"""Third-party super-resolution checkpoints (ESRGAN, Real-ESRGAN Compact, SPAN, SwinIR, ...) through spandrel.

``load_thirdparty(path)`` reads a ``.pth`` / ``.pt`` / ``.ckpt`` / ``.safetensors`` weights-only, lets
spandrel recognise the architecture and returns a :class:`ThirdPartyModel` that export, verify,
calibrate, build and upscale treat like an HRX model. ``hrx.load_model`` dispatches here for any
file that is not an HRX checkpoint. spandrel is imported through :mod:`hrx.thirdparty.spandrel_import`
(works without a usable torchvision).
"""
from __future__ import annotations

from hrx.lazy import lazy_getattr

_LAZY = {
    "load_thirdparty": "hrx.thirdparty.loader",
    "known_architectures": "hrx.thirdparty.loader",
    "read_state_dict": "hrx.thirdparty.loader",
    "ThirdPartyModel": "hrx.thirdparty.model",
    "overlap_rule": "hrx.thirdparty.model",
    "fuse_reparam": "hrx.thirdparty.fuse",
    "import_spandrel": "hrx.thirdparty.spandrel_import",
    "spandrel_problem": "hrx.thirdparty.spandrel_import",
}

__all__ = list(_LAZY)

__getattr__ = lazy_getattr(__name__, _LAZY)
