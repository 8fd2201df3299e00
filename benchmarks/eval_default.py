"""Quality table of bundled (or any) models on their held-out validation photos.

    python benchmarks/eval_default.py                       # default-x2 and default-x4
    python benchmarks/eval_default.py out/my.safetensors    # any checkpoint trained with hrx train
    python benchmarks/eval_default.py --figure docs/before_after.png

For each model: the validation images recorded in its checkpoint (``extra["split"]["val"]``, never
seen in training), evaluated with :func:`hrx.evaluate.evaluate` (Y-channel PSNR / SSIM, border =
scale, against bicubic upscaling of the same bicubic-downscaled input). Prints markdown tables.
``--figure`` writes a before/after crop (bicubic | HRX | original) from the first model.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import hrx
from hrx.checkpoint import read_checkpoint
from hrx.data import bicubic_downscale, bicubic_upscale, list_images, load_image, mod_crop
from hrx.evaluate import EvalRow, evaluate, format_table, run_padded


def validation_images(extra: dict) -> list[tuple[str, torch.Tensor]]:
    """The held-out images named in a checkpoint's training metadata."""
    data = extra.get("data", "skimage")
    by_name = {r.name: r for r in list_images(None if data == "skimage" else data)}
    names = extra["split"]["val"]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SystemExit(f"validation images not found: {', '.join(missing)}")
    return [(n, load_image(by_name[n].path)) for n in names]


def training_command(extra: dict) -> str | None:
    """The ``hrx train`` command, rebuilt from the full config recorded in the checkpoint (the stored
    ``command`` string leaves out options that had their default value at the time)."""
    import dataclasses

    from hrx.train import TrainConfig

    config = extra.get("config")
    if not isinstance(config, dict):
        return extra.get("command")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in config.items() if k in fields}).command_line()


def before_after(model: torch.nn.Module, name: str, hr: torch.Tensor, scale: int, path: Path, box: int = 128) -> None:
    """Save ``bicubic | HRX | original`` of the most detailed ``box`` x ``box`` crop, enlarged 2x (nearest)."""
    from PIL import Image, ImageDraw

    hr = mod_crop(hr.unsqueeze(0), scale)
    lr = bicubic_downscale(hr, scale)
    with torch.no_grad():
        sr = run_padded(model.eval(), lr).clamp(0, 1)
    base = bicubic_upscale(lr, scale).clamp(0, 1)
    err = (base - hr).abs().mean(1, keepdim=True)  # where bicubic loses most detail
    score = torch.nn.functional.avg_pool2d(err, box, stride=box // 4)
    idx = int(score.flatten().argmax())
    y, x = divmod(idx, score.shape[-1])
    y, x = y * (box // 4), x * (box // 4)
    panels = [t[0, :, y:y + box, x:x + box] for t in (base, sr, hr)]
    labels = [f"bicubic x{scale}", f"HRX x{scale}", "original"]
    zoom, pad, top = 2, 6, 22
    canvas = Image.new("RGB", (3 * box * zoom + 4 * pad, box * zoom + top + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (p, label) in enumerate(zip(panels, labels)):
        img = Image.fromarray((p.permute(1, 2, 0) * 255).round().byte().numpy()).resize((box * zoom, box * zoom), Image.NEAREST)
        left = pad + i * (box * zoom + pad)
        canvas.paste(img, (left, top))
        draw.text((left, 5), f"{label} ({name})", fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["default-x2", "default-x4"], help="checkpoints or bundled names")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--figure", type=Path, default=None, help="write a before/after crop PNG (first model)")
    ap.add_argument("--figure-image", default=None, help="validation image for --figure (default: the largest)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = []
    for i, ref in enumerate(args.models):
        arch, config, _, extra = read_checkpoint(ref)
        model = hrx.load_model(ref)
        images = validation_images(extra)
        t = time.perf_counter()
        rows: list[EvalRow] = evaluate(model, images, model.scale)
        n = sum(p.numel() for p in model.parameters())
        print(f"\n### {ref}: {arch} x{model.scale}, {n:,} parameters, {extra.get('steps', '?')} steps, "
              f"seed {extra.get('seed', '?')}, data {extra.get('data', '?')} ({time.perf_counter() - t:.1f} s)\n")
        print(format_table(rows))
        out += [{"model": ref, **r.as_dict()} for r in rows]
        command = training_command(extra)
        if command:
            print(f"\ntrained with: `{command}`")
        if i == 0 and args.figure is not None:
            chosen = [im for im in images if im[0] == args.figure_image] if args.figure_image else images
            if not chosen:
                raise SystemExit(f"--figure-image {args.figure_image}: not a validation image of {ref}")
            name, hr = max(chosen, key=lambda im: im[1].shape[-1] * im[1].shape[-2])
            before_after(model, name, hr, model.scale, args.figure)
            print(f"\nwrote {args.figure}")
    from results import save

    save("eval_default", out, params={"models": ",".join(args.models), "threads": args.threads})


if __name__ == "__main__":
    main()
