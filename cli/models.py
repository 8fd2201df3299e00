"""``hrx models``: architectures and bundled models."""
from __future__ import annotations

import typer

from hrx.cli.common import handle_errors


@handle_errors
def models() -> None:
    """List the architecture presets and the models bundled with this install."""
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
