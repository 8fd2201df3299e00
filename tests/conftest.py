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


def assert_not_bicubic(out, x, scale: int, margin: float = 1e-3) -> float:
    """A fidelity reference must differ from the trivial baseline: an untrained HRX model IS bicubic
    upscaling, so matching it would prove nothing. Returns the max abs difference from bicubic."""
    out, x = torch.as_tensor(out), torch.as_tensor(x)
    bicubic = x if scale == 1 else torch.nn.functional.interpolate(x, scale_factor=scale, mode="bicubic",
                                                                   align_corners=False)
    diff = (out.float() - bicubic.float()).abs().max().item()
    assert diff > margin, f"output is bicubic upscaling (max diff {diff:.2e}): perturb the weights"
    return diff


def randomize_params(model: torch.nn.Module, std: float = 0.05) -> None:
    """Perturb every parameter (zero-initialised residual scales included) and BN statistics."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    randomize_bn(model)


@pytest.fixture(scope="session")
def hrx_t_dynamic(tmp_path_factory):
    """hrx-t x2 with perturbed weights, exported once per session with ``--batch dynamic`` at tile 32:
    ``(checkpoint, onnx)``. Shared by the Triton and Ray tests (an export takes tens of seconds here)."""
    from typer.testing import CliRunner

    import hrx
    from hrx.cli.main import app

    tmp = tmp_path_factory.mktemp("hrx_t_dynamic")
    torch.manual_seed(0)
    model = hrx.create_model("hrx-t", scale=2)
    randomize_params(model, 0.05)
    ckpt = hrx.save_model(model, tmp / "t.pt")
    onnx_path = tmp / "t-dynamic.onnx"
    r = CliRunner().invoke(app, ["export", str(ckpt), "-o", str(onnx_path), "--tile", "32", "--batch", "dynamic"])
    assert r.exit_code == 0, r.output
    return ckpt, onnx_path


def scan_inputs(b: int, L: int, H: int, P: int, N: int, device: str = "cpu", seed: int = 0) -> list[torch.Tensor]:
    """Random selective-scan inputs, channels first like the PyTorch scans: x [b, H, P, L], dt [b, H, L]
    (positive), A [H] (negative), B, C [b, N, L], D [H]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, H, P, L, generator=g)
    dt = torch.nn.functional.softplus(torch.randn(b, H, L, generator=g)) * 0.5
    A = -(torch.rand(H, generator=g) * 3 + 0.1)
    B, C = torch.randn(b, N, L, generator=g), torch.randn(b, N, L, generator=g)
    D = torch.randn(H, generator=g)
    return [t.to(device) for t in (x, dt, A, B, C, D)]
