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


def perturbed_hrx_t(scale: int = 2, seed: int = 0) -> torch.nn.Module:
    """hrx-t with every parameter perturbed (std 0.05) after ``torch.manual_seed(seed)``, in eval mode."""
    import hrx

    torch.manual_seed(seed)
    model = hrx.create_model("hrx-t", scale=scale)
    randomize_params(model, 0.05)
    return model.eval()


@pytest.fixture(scope="session")
def hrx_t_x2(tmp_path_factory):
    """The checkpoint of :func:`perturbed_hrx_t` x2 (seed 0), saved once per session; load it with
    ``hrx.load_model`` for the PyTorch reference."""
    import hrx

    return hrx.save_model(perturbed_hrx_t(), tmp_path_factory.mktemp("hrx_t_x2") / "hrx-t-x2.pt")


def _export_hrx_t_x2(ckpt, tmp_path_factory, ops: str, target: str | None = None):
    from hrx.export.onnx_export import export_onnx

    name = f"hrx-t-x2-{ops}" + (f"-{target}" if target else "")
    return export_onnx(ckpt, tmp_path_factory.mktemp(name) / f"{name}.onnx", tile=32, ops=ops, target=target)


@pytest.fixture(scope="session")
def hrx_t_x2_native(hrx_t_x2, tmp_path_factory):
    """``hrx_t_x2`` exported once per session as ``export_onnx`` does by default (native ops, tile 32, batch 1,
    simplified, the default target's graph passes): its ``ExportResult``. Shared by the export, passes and
    TensorRT parser tests (each export takes tens of seconds here); read it, never write it."""
    return _export_hrx_t_x2(hrx_t_x2, tmp_path_factory, "native")


@pytest.fixture(scope="session")
def hrx_t_x2_plugin(hrx_t_x2, tmp_path_factory):
    """``hrx_t_x2`` exported once per session with ``ops="plugin"`` (otherwise as ``hrx_t_x2_native``)."""
    return _export_hrx_t_x2(hrx_t_x2, tmp_path_factory, "plugin")


@pytest.fixture(scope="session")
def hrx_t_x2_onnxruntime(hrx_t_x2, tmp_path_factory):
    """``hrx_t_x2`` exported once per session with ``target="onnxruntime"`` (otherwise as ``hrx_t_x2_native``)."""
    return _export_hrx_t_x2(hrx_t_x2, tmp_path_factory, "native", "onnxruntime")


@pytest.fixture(scope="session")
def hrx_t_dynamic(hrx_t_x2, tmp_path_factory):
    """``hrx_t_x2`` exported once per session with ``--batch dynamic`` at tile 32: ``(checkpoint, onnx)``.
    Shared by the Triton and Ray tests (an export takes tens of seconds here)."""
    from typer.testing import CliRunner

    from hrx.cli.main import app

    tmp = tmp_path_factory.mktemp("hrx_t_dynamic")
    ckpt = hrx_t_x2
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
