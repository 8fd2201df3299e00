"""``torch.compile`` (inductor, CPU) of the fused model: it compiles and matches eager.

The shape-only masks (window attention's shift mask, the scan's causal masks) are built from
buffers and plain tensor ops, so Dynamo traces the whole forward with no NumPy inside it."""
from __future__ import annotations

import copy

import pytest
import torch

import hrx
from tests.conftest import randomize_params


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["hrx-t"])  # hydra-t and the larger presets: one compile is minutes on 2 cores
def test_torch_compile_of_fused_model_matches_eager(arch):
    torch.manual_seed(0)
    model = hrx.create_model(arch, scale=2).eval()
    randomize_params(model, 0.05)
    fused = hrx.fuse(model)
    side = 2 * model.size_multiple
    x = torch.rand(1, model.in_channels, side, side, generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    compiled = torch.compile(fused, backend="inductor", fullgraph=True)
    with torch.no_grad():
        eager = fused(x)
        out = compiled(x)
        again = compiled(x)  # the second call reuses the compiled graph
    assert out.shape == eager.shape
    assert (out - eager).abs().max().item() < 1e-5
    # and it is as accurate as eager: both against the same model in float64 (the scan and the softmax,
    # which the model computes in float32 on purpose, stay float32 there)
    with torch.no_grad():
        exact = copy.deepcopy(fused).double()(x.double())
    eager_err = (eager.double() - exact).abs().max().item()
    compiled_err = (out.double() - exact).abs().max().item()
    assert compiled_err <= 2 * eager_err + 1e-6, (compiled_err, eager_err)
    assert torch.equal(out, again)
    # the comparison is not vacuous: the perturbed model is far from its bicubic residual
    assert (eager - model.residual(x)).abs().max().item() > 1e-2
