"""Shared fixtures: tiny models, seeded RNG."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def randomize_bn(model: torch.nn.Module) -> None:
    """Give every BatchNorm non-trivial statistics and affine so fusion tests mean something."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.8 + 0.4)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.8 + 0.6)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)


def randomize_params(model: torch.nn.Module, std: float = 0.05) -> None:
    """Perturb every parameter (zero-initialised residual scales included) and BN statistics."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    randomize_bn(model)
