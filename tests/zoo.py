"""Test support (not shipped in the package): networks of other architectures built with spandrel's
own classes, for tests, the support table and the peer benchmark (no weights can be downloaded).

``build(name, scale, size)`` returns spandrel's ``nn.Module`` with random but non-trivial weights:
default initialisation plus a seeded perturbation of every tensor, including the ones that are
initialised to zero or one (biases, norm affines, layer scales) and norm running statistics, so no
branch is an identity and no test passes by symmetry. ``size="tiny"`` configurations keep CI fast;
``size="real"`` are the published sizes (for the peer benchmark).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn


@dataclass(frozen=True)
class ZooEntry:
    name: str  # the name people use (RRDBNet, SRVGGNetCompact, ...)
    module: str  # spandrel.architectures.<module>
    cls: str  # the name spandrel exports the class under
    scales: tuple[int, ...]
    tiny: Callable[[int], dict[str, Any]]
    real: Callable[[int], dict[str, Any]]


ZOO: dict[str, ZooEntry] = {e.name: e for e in [
    ZooEntry("RRDBNet", "ESRGAN", "ESRGAN", (2, 4),
             lambda s: dict(in_nc=3, out_nc=3, num_filters=16, num_blocks=1, scale=s),
             lambda s: dict(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=s)),
    ZooEntry("SRVGGNetCompact", "Compact", "Compact", (2, 4),
             lambda s: dict(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=s, act_type="prelu"),
             lambda s: dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32, upscale=s, act_type="prelu")),
    ZooEntry("SPAN", "SPAN", "SPAN", (2, 4),
             lambda s: dict(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=s),
             lambda s: dict(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=s)),
    ZooEntry("SwinIR", "SwinIR", "SwinIR", (2, 4),
             lambda s: dict(img_size=16, in_chans=3, embed_dim=12, depths=[2], num_heads=[2], window_size=4,
                            mlp_ratio=2.0, upscale=s, upsampler="pixelshuffledirect", resi_connection="1conv"),
             lambda s: dict(img_size=64, in_chans=3, embed_dim=60, depths=[6, 6, 6, 6], num_heads=[6, 6, 6, 6],
                            window_size=8, mlp_ratio=2.0, upscale=s, upsampler="pixelshuffledirect",
                            resi_connection="1conv")),
    ZooEntry("OmniSR", "OmniSR", "OmniSR", (2, 4),
             lambda s: dict(num_in_ch=3, num_out_ch=3, num_feat=16, block_num=1, window_size=8, res_num=1, up_scale=s),
             lambda s: dict(num_in_ch=3, num_out_ch=3, num_feat=64, block_num=1, window_size=8, res_num=5, up_scale=s)),
    ZooEntry("RealPLKSR", "PLKSR", "RealPLKSR", (2, 4),
             lambda s: dict(dim=16, n_blocks=2, upscaling_factor=s, kernel_size=9, split_ratio=0.25),
             lambda s: dict(dim=64, n_blocks=28, upscaling_factor=s, kernel_size=17, split_ratio=0.25)),
    ZooEntry("SAFMN", "SAFMN", "SAFMN", (2, 4),
             lambda s: dict(dim=16, n_blocks=2, ffn_scale=2.0, upscaling_factor=s),
             lambda s: dict(dim=36, n_blocks=8, ffn_scale=2.0, upscaling_factor=s)),
]}


def spandrel_class(entry: ZooEntry) -> type[nn.Module]:
    from hrx.spandrel_models.spandrel_import import import_spandrel, spandrel_problem

    if import_spandrel() is None:
        raise RuntimeError(spandrel_problem())
    return getattr(importlib.import_module(f"spandrel.architectures.{entry.module}"), entry.cls)


@torch.no_grad()
def perturb(net: nn.Module, seed: int = 0, amount: float = 0.1) -> nn.Module:
    """Seeded perturbation of every float tensor of the state dict (parameters and buffers)."""
    g = torch.Generator().manual_seed(seed)
    for name, t in net.state_dict(keep_vars=True).items():
        t = t.data if isinstance(t, nn.Parameter) else t
        if not t.is_floating_point() or t.numel() == 0 or "attn_mask" in name or "relative_position_index" in name:
            continue
        noise = torch.randn(t.shape, generator=g, dtype=t.dtype)
        if name.endswith("running_var"):
            t.mul_(1 + 0.2 * noise.abs())
            continue
        spread = float(t.std()) if t.numel() > 1 else 0.0
        if spread == 0.0:  # constant init (zeros, ones, a single value): give it structure
            t.add_(amount * noise)
        else:
            t.add_(amount * spread * noise)
    return net


def build(name: str, scale: int, size: str = "tiny", seed: int = 0) -> nn.Module:
    """spandrel's ``name`` network at ``scale`` with perturbed weights, in eval mode."""
    entry = ZOO[name]
    if scale not in entry.scales:
        raise ValueError(f"{name} has no x{scale} configuration here (scales: {entry.scales})")
    cls = spandrel_class(entry)
    torch.manual_seed(seed)
    kwargs = (entry.tiny if size == "tiny" else entry.real)(scale)
    return _tame_output(perturb(cls(**kwargs), seed=seed).eval())


@torch.no_grad()
def _tame_output(net: nn.Module) -> nn.Module:
    """Scale the last conv so a random network's output has image-like spread (SPAN's x255 input
    normalisation makes it ~8; RRDBNet's is ~0.02 around 0); keeps tolerances and PSNR meaningful.
    Other networks are left alone."""
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(123))
    y = net(x)
    spread, centre = float(y.std()), float(y.mean())
    last = [m for m in net.modules() if isinstance(m, nn.Conv2d)][-1]
    if spread > 2.0:
        last.weight.mul_(0.3 / spread)
        if last.bias is not None:
            last.bias.mul_(0.3 / spread)
    elif (spread < 0.1 or abs(centre - 0.5) > 0.4) and last.bias is not None and type(net).__name__ == "RRDBNet":
        # RRDBNet's output is its last conv (no skip): spread it to image-like values instead of a
        # near-constant that the runtime's clamp would turn into a flat image
        last.weight.mul_(0.25 / spread)
        last.bias.mul_(0.25 / spread).add_(0.5 - centre * 0.25 / spread)
    return net


def save(net: nn.Module, path) -> None:
    """Write ``net``'s state dict as people share it: ``.safetensors``, or a plain ``torch.save`` dict."""
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, str(path))
