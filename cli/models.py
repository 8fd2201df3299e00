"""``hrx models``: architectures and bundled models."""
from __future__ import annotations

import typer

from hrx.cli.common import handle_errors


@handle_errors
def models() -> None:
    """List the architecture presets, the models bundled with this install and the third-party
    architectures (spandrel) it can load. Without PyTorch (the base install): the bundled models, from
    their shipped ONNX files."""
    from hrx.extras import installed

    if not installed("torch"):
        _bundled_onnx()
        return
    import hrx
    from hrx.checkpoint import bundled_models, read_checkpoint
    from hrx.registry import get_entry

    typer.echo("architectures:")
    for name in hrx.list_models():
        typer.echo(f"  {name:12s} {get_entry(name).description}")
    bundled = bundled_models()
    typer.echo("bundled models:" if bundled else "bundled models: none")
    for name, path in bundled.items():
        arch, config, _, extra = read_checkpoint(path)
        n = sum(p.numel() for p in hrx.load_model(path).parameters())  # parameters, not BN buffers
        val = extra.get("val_psnr")
        val_s = f", val PSNR {val:.2f} dB (bicubic {extra.get('val_psnr_bicubic', float('nan')):.2f})" if val else ""
        typer.echo(f"  {name:12s} {arch}, x{config['scale']}, {n:,} parameters{val_s}")
    _spandrel_models()


def _bundled_onnx() -> None:
    """The bundled models as their shipped ONNX files describe them (no PyTorch needed)."""
    from hrx.checkpoint import bundled_models, bundled_onnx
    from hrx.interface import ModelInfo

    names = [n for n in bundled_models() if bundled_onnx(n).is_file()]
    typer.echo("bundled models (ONNX):" if names else "bundled models: none")
    for name in names:
        i = ModelInfo.from_onnx(bundled_onnx(name))
        typer.echo(f"  {name:12s} {i.arch}, x{i.scale}, tile {i.tile}")
    typer.echo("architectures and third-party checkpoints: need PyTorch: pip install 'hrx[export]'")


def _spandrel_models() -> None:
    """The spandrel architectures this install can load (``hrx export some_esrgan.pth`` etc.)."""
    from hrx.spandrel_models.loader import known_architectures
    from hrx.spandrel_models.spandrel_import import spandrel_problem, stand_in_notice

    problem = spandrel_problem()
    if problem is not None:
        typer.echo(f"third-party checkpoints: unavailable: {problem}")
        return
    import spandrel

    archs = known_architectures()
    if stand_in_notice():  # LaMa needs torchvision's rotate (and a mask: hrx does not deploy inpainting anyway)
        archs = [a for a in archs if a != "LaMa"]
    typer.echo(f"third-party checkpoints (.pth / .pt / .ckpt / .safetensors, via spandrel {spandrel.__version__}, "
               f"{len(archs)} architectures):")
    for i in range(0, len(archs), 8):
        typer.echo("  " + " ".join(f"{a:12s}" for a in archs[i:i + 8]).rstrip())
    if stand_in_notice():
        typer.echo("  (torchvision unusable here: spandrel runs on hrx's stand-in, which LaMa cannot)")
