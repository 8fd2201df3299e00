"""``fuse(model)``: the deploy copy of a model.

Deep-copies the model, switches it to eval, and calls ``fuse()`` on every sub-module that has one,
innermost first: re-parameterizable branches become single convs, BatchNorm and LayerNorm affines
are folded, MoE routing is frozen to top-1, any training noise is off. The training model is not
touched. Calling it on an already fused model changes nothing.
"""
from __future__ import annotations

import copy

from torch import nn


def fuse(model: nn.Module) -> nn.Module:
    """An eval-mode deploy copy of ``model`` with every block's ``fuse()`` applied, innermost first; ``model`` is
    untouched."""
    deploy = copy.deepcopy(model).eval()
    for module in reversed(list(deploy.modules())):
        if module is not deploy and callable(getattr(module, "fuse", None)):
            module.fuse()
    if callable(getattr(type(deploy), "fuse", None)):
        deploy.fuse()
    for p in deploy.parameters():
        p.requires_grad_(False)
    deploy.hrx_fused = True  # not "fused": blocks have a child module of that name
    return deploy


def count_convs(model: nn.Module) -> int:
    """How many ``nn.Conv2d`` modules ``model`` holds."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())
