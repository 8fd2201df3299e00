"""The bundled models' shipped ONNX files: ``python -m hrx.export.bundle`` exports every checkpoint in
``hrx/weights`` (``NAME.safetensors``) to ``hrx/weights/NAME.onnx`` with the default export settings
(native ops, FP32, batch 1) at the static tile :data:`hrx.checkpoint.BUNDLED_TILE`.

The base install runs these files without PyTorch. Each carries its checkpoint's sha256 in its metadata
(``checkpoint_sha256``); the runtime uses a shipped file only when that matches the checkpoint beside it,
and tests/test_bundled.py checks that the files match a fresh export. Re-run this after retraining a
bundled model or changing the exporter.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from hrx.checkpoint import BUNDLED_TILE, bundled_models, bundled_onnx


def export_bundled(names: list[str] | None = None, out_dir: Path | None = None,
                   tile: int = BUNDLED_TILE) -> list[Path]:
    """Export the bundled checkpoints ``names`` (default: all) to ``out_dir`` (default: next to them)."""
    from hrx.errors import HRXError
    from hrx.export.onnx_export import export_onnx

    models = bundled_models()
    unknown = sorted(set(names or []) - set(models))
    if unknown:
        raise HRXError(f"not bundled models: {', '.join(unknown)} (bundled: {', '.join(models)})")
    written = []
    for name in names or list(models):
        out = bundled_onnx(name) if out_dir is None else Path(out_dir) / f"{name}.onnx"
        result = export_onnx(models[name], out, tile=tile)
        print(result.summary())
        written.append(out)
    return written


def main(argv: list[str] | None = None) -> None:
    """``python -m hrx.export.bundle [NAMES] [-o DIR]``: :func:`export_bundled` from the command line."""
    parser = argparse.ArgumentParser(prog="python -m hrx.export.bundle", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="bundled models (default: all)")
    parser.add_argument("-o", "--out-dir", type=Path, default=None, help="folder (default: hrx/weights)")
    args = parser.parse_args(argv)
    export_bundled(args.names or None, args.out_dir)


if __name__ == "__main__":
    main()
