"""``hrx new``: write a randomly initialised checkpoint so every pipeline can be tried untrained."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hrx.cli.common import Seed, handle_errors, needs


@handle_errors
@needs("export")
def new(
    arch: Annotated[str, typer.Argument(help="Architecture preset, e.g. hrx-t, hrx-s, hrx-m (see `hrx models`).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the checkpoint (.pt or .safetensors).")] = Path("model.pt"),
    scale: Annotated[int, typer.Option("--scale", "-s", help="Upscaling factor: 1 (restoration), 2, 3 or 4.")] = 4,
    in_channels: Annotated[int, typer.Option("--in-channels", "-c", help="Input channels: 1 (gray), 3 (RGB) or 4 (RGBA).")] = 3,
    seed: Seed = 0,
) -> None:
    """Create a randomly initialised model checkpoint (an untrained model upscales like bicubic)."""
    import torch

    import hrx
    from hrx.errors import HRXError

    torch.manual_seed(seed)
    try:
        model = hrx.create_model(arch, scale=scale, in_channels=in_channels)
    except (KeyError, ValueError, TypeError) as e:
        raise HRXError(str(e).strip("'\"")) from None
    path = hrx.save_model(model, output)
    n = sum(p.numel() for p in model.parameters())
    typer.echo(f"wrote {path} ({arch}, x{scale}, {in_channels} channels, {n:,} parameters, seed {seed})")
