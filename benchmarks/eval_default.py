"""Quality table of the bundled (or any) models on their held-out validation photos, for clean and
degraded inputs.

    python benchmarks/eval_default.py                       # default-x1, default-x2, default-x4
    python benchmarks/eval_default.py out/my.safetensors    # any checkpoint trained with hrx train
    python benchmarks/eval_default.py --previous default-x2=old-x2.safetensors   # and the model it replaces
    python benchmarks/eval_default.py --figure docs/before_after.png --previous default-x4=old-x4.safetensors

For each model: the validation images recorded in its checkpoint (``extra["split"]["val"]``, never
seen in training), evaluated with :func:`hrx.evaluate.evaluate` (Y-channel PSNR / SSIM, border =
scale) under each of :data:`hrx.degradations.EVAL_CONDITIONS`: the bicubic-downscaled photo as it
is (clean), saved as JPEG q40 or q70, or with Gaussian noise sigma 6 then JPEG q80. The baseline is
bicubic upscaling of the same input (x1: the degraded input itself; x1 has no clean row, its clean
input is the target). ``--previous NAME=CKPT`` adds the model that NAME replaces, on the same inputs.
Prints Markdown tables and writes ``benchmarks/results/eval_default.json``.

``--figure`` writes a before/after crop of a JPEG-q40 input: bicubic | previous model | model | original
(needs ``--previous`` for the first model; without it the previous panel is left out).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import hrx
from hrx.checkpoint import read_checkpoint
from hrx.data import bicubic_downscale, bicubic_upscale, list_images, load_image, mod_crop
from hrx.degradations import EVAL_CONDITIONS, EvalCondition
from hrx.evaluate import evaluate, run_padded, summarize

DEFAULT_MODELS = ["default-x1", "default-x2", "default-x4"]
FIGURE_CONDITION = EvalCondition("jpeg40", jpeg=40)


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


def conditions(scale: int) -> list[EvalCondition]:
    """The table's inputs: at x1 a clean input is the target itself, so only the degraded ones."""
    return [c for c in EVAL_CONDITIONS if scale > 1 or c.name != "clean"]


def measure(model: torch.nn.Module, images: list, scale: int) -> dict[str, dict[str, float]]:
    """``{condition: {psnr, ssim, psnr_input, ssim_input}}``, means over the images."""
    out = {}
    for c in conditions(scale):
        s = summarize(evaluate(model, images, scale, condition=c))
        out[c.name] = {"psnr": s.psnr_model, "ssim": s.ssim_model, "psnr_input": s.psnr_bicubic,
                       "ssim_input": s.ssim_bicubic}
    return out


def table(name: str, scale: int, new: dict, old: dict | None) -> str:
    base = "input" if scale == 1 else "bicubic"
    head = f"| input | {base} PSNR-Y | " + ("previous | " if old else "") + f"{name} | gain vs {base} | " + \
        ("gain vs previous | " if old else "") + f"{base} SSIM-Y | " + ("previous | " if old else "") + f"{name} |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for cond, m in new.items():
        cells = [cond, f"{m['psnr_input']:.2f}"] + ([f"{old[cond]['psnr']:.2f}"] if old else []) + \
            [f"{m['psnr']:.2f}", f"{m['psnr'] - m['psnr_input']:+.2f}"] + \
            ([f"{m['psnr'] - old[cond]['psnr']:+.2f}"] if old else []) + [f"{m['ssim_input']:.4f}"] + \
            ([f"{old[cond]['ssim']:.4f}"] if old else []) + [f"{m['ssim']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def before_after(models: list[tuple[str, torch.nn.Module]], name: str, hr: torch.Tensor, scale: int, path: Path,
                 condition: EvalCondition = FIGURE_CONDITION, box: int = 128) -> None:
    """``bicubic | model ... | original`` of the most detailed ``box`` x ``box`` crop of ``hr`` downscaled and
    degraded by ``condition``, enlarged 2x (nearest)."""
    from PIL import Image, ImageDraw

    hr = mod_crop(hr.unsqueeze(0), scale)
    lr = condition(bicubic_downscale(hr, scale))
    base = bicubic_upscale(lr, scale).clamp(0, 1)
    with torch.no_grad():
        outs = [run_padded(m.eval(), lr).clamp(0, 1) for _, m in models]
    err = (bicubic_upscale(bicubic_downscale(hr, scale), scale) - hr).abs().mean(1, keepdim=True)
    score = torch.nn.functional.avg_pool2d(err, box, stride=box // 4)  # where detail is
    y, x = divmod(int(score.flatten().argmax()), score.shape[-1])
    y, x = y * (box // 4), x * (box // 4)
    panels = [base, *outs, hr]
    labels = [f"bicubic x{scale}", *[label for label, _ in models], "original"]
    zoom, pad, top = 2, 6, 22
    canvas = Image.new("RGB", (len(panels) * (box * zoom + pad) + pad, box * zoom + top + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (p, label) in enumerate(zip(panels, labels)):
        crop = p[0, :, y:y + box, x:x + box]
        img = Image.fromarray((crop.permute(1, 2, 0) * 255).round().byte().numpy()).resize((box * zoom, box * zoom),
                                                                                            Image.NEAREST)
        left = pad + i * (box * zoom + pad)
        canvas.paste(img, (left, top))
        draw.text((left, 5), label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=DEFAULT_MODELS, help="checkpoints or bundled names")
    ap.add_argument("--previous", action="append", default=[], metavar="NAME=CKPT",
                    help="the checkpoint that model NAME replaces, measured on the same inputs (repeatable)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--figure", type=Path, default=None, help="write a before/after crop PNG (first model)")
    ap.add_argument("--figure-image", default=None, help="validation image for --figure (default: the largest)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    previous = dict(p.split("=", 1) for p in args.previous)
    unknown = set(previous) - set(args.models)
    if unknown:
        raise SystemExit(f"--previous names models not measured: {', '.join(sorted(unknown))}")
    rows = []
    for i, ref in enumerate(args.models):
        arch, config, _, extra = read_checkpoint(ref)
        model = hrx.load_model(ref)
        scale = model.scale
        images = validation_images(extra)
        t = time.perf_counter()
        new = measure(model, images, scale)
        old = measure(hrx.load_model(previous[ref]), images, scale) if ref in previous else None
        n = sum(p.numel() for p in model.parameters())
        print(f"\n### {ref}: {arch} x{scale}, {n:,} parameters, {extra.get('steps', '?')} steps; validation photos "
              f"{', '.join(extra['split']['val'])} ({time.perf_counter() - t:.0f} s)\n")
        print(table(ref, scale, new, old))
        for cond, m in new.items():
            row = {"model": ref, "scale": scale, "input": cond, "baseline": "input" if scale == 1 else "bicubic",
                   "psnr_baseline": round(m["psnr_input"], 3), "psnr": round(m["psnr"], 3),
                   "gain": round(m["psnr"] - m["psnr_input"], 3), "ssim_baseline": round(m["ssim_input"], 4),
                   "ssim": round(m["ssim"], 4)}
            if old:
                row.update(psnr_previous=round(old[cond]["psnr"], 3), ssim_previous=round(old[cond]["ssim"], 4),
                           gain_vs_previous=round(m["psnr"] - old[cond]["psnr"], 3))
            rows.append(row)
        degraded = [m["psnr"] - m["psnr_input"] for c, m in new.items() if c != "clean"]
        print(f"\nmean gain on degraded inputs: {sum(degraded) / len(degraded):+.2f} dB")
        command = training_command(extra)
        if command:
            print(f"\ntrained with: `{command}`")
        if i == 0 and args.figure is not None:
            chosen = [im for im in images if im[0] == args.figure_image] if args.figure_image else images
            if not chosen:
                raise SystemExit(f"--figure-image {args.figure_image}: not a validation image of {ref}")
            name, hr = max(chosen, key=lambda im: im[1].shape[-1] * im[1].shape[-2])
            panels = ([(f"previous {ref}", hrx.load_model(previous[ref]))] if ref in previous else []) + [(ref, model)]
            before_after(panels, name, hr, scale, args.figure)
            print(f"\nwrote {args.figure} ({name}, {FIGURE_CONDITION.name} input)")
    from results import save

    save("eval_default", rows, params={"models": ",".join(args.models), "threads": args.threads,
                                       "previous": ",".join(args.previous)})


if __name__ == "__main__":
    main()
