"""``hrx train``: train a super-resolution (x2, x3, x4) or restoration (x1) model."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from hrx.cli.common import Seed, handle_errors, is_interactive, needs


class TrainReporter:
    """Draws a training run (:class:`hrx.train.TrainEvents`): a rich progress bar (loss, val PSNR)
    on a terminal, plain log lines otherwise."""

    def __init__(self, bar: bool, log: Callable[[str], None] | None = None) -> None:
        self.use_bar, self.log, self.bar = bar, log, None
        self.cfg = None
        self.val = "-"

    def started(self, cfg, summary: str, step: int) -> None:
        self.cfg = cfg
        if self.log:
            self.log(summary)
        if self.use_bar:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]}  val PSNR-Y {task.fields[val]}"),
                                TimeElapsedColumn(), TimeRemainingColumn(), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("train", total=cfg.steps, completed=step, loss="-", val="-")

    def stepped(self, step: int, loss: float, lr: float, seconds: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{loss:.4f}", val=self.val)
        elif self.log and (step % self.cfg.log_every == 0 or step == self.cfg.steps):
            self.log(f"step {step}/{self.cfg.steps}  loss {loss:.4f}  lr {lr:.2e}  {seconds:.2f} s/step "
                     f"({1 / max(seconds, 1e-9):.2f} steps/s)  "
                     f"val PSNR-Y {self.val}")

    def validated(self, step: int, rows) -> None:
        from hrx.evaluate import summarize

        s = summarize(rows)
        self.val = f"{s.psnr_model:.2f} ({s.gain:+.2f} vs bicubic)"
        if self.bar is not None:
            self.bar.update(self.task, val=self.val)
        elif self.log:
            self.log(f"val step {step}: PSNR-Y {s.psnr_model:.3f} dB, bicubic {s.psnr_bicubic:.3f} dB, "
                     f"gain {s.gain:+.3f} dB, SSIM-Y {s.ssim_model:.4f} (bicubic {s.ssim_bicubic:.4f})")

    def warning(self, message: str) -> None:
        if self.log:
            self.log(f"warning: {message}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@handle_errors
@needs("train")
def train(
    arch: Annotated[str, typer.Option("--arch", "-a", help="Architecture preset (see `hrx models`).")] = "hrx-s",
    scale: Annotated[int, typer.Option("--scale", "-s", help="Upscaling factor: 2, 3, 4, or 1 for restoration.")] = 2,
    data: Annotated[Optional[Path], typer.Option("--data", help="Folder of training images (searched recursively). "
                    "Default: the photos bundled with scikit-image. The split into train and validation images is by "
                    "image, fixed by --seed.", show_default=False)] = None,
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps in the whole run.")] = 2000,
    batch: Annotated[int, typer.Option("--batch", "-b", help="Crops per step.")] = 8,
    patch: Annotated[int, typer.Option("--patch", "-p", help="HR crop side in pixels; patch / scale must be a multiple "
                     "of the model's size_multiple (32 for hrx-s, 16 for hrx-t).")] = 128,
    output: Annotated[Path, typer.Option("-o", "--output", help="Checkpoint to write (.pt or .safetensors); the resume "
                      "state goes next to it as <name>.resume.pt.")] = Path("model.pt"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue from <output>.resume.pt exactly where it stopped "
                      "(same options required).")] = False,
    lr: Annotated[float, typer.Option("--lr", help="Peak AdamW learning rate (linear warm-up, then cosine decay). "
                  "2e-3 learns faster but made hrx-s x4 collapse to bicubic.")] = 1e-3,
    min_lr: Annotated[float, typer.Option("--min-lr", help="Learning rate at the end of the cosine decay.")] = 1e-5,
    warmup: Annotated[int, typer.Option("--warmup", help="Warm-up steps.")] = 100,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay (not on biases/scales).")] = 1e-4,
    grad_clip: Annotated[float, typer.Option("--grad-clip", help="Gradient-norm clip (0: off).")] = 1.0,
    fft_weight: Annotated[float, typer.Option("--fft-weight", help="Weight of the frequency (FFT) loss.")] = 0.05,
    ssim_weight: Annotated[float, typer.Option("--ssim-weight", help="Weight of the 1 - SSIM loss (0: off).")] = 0.0,
    moe_weight: Annotated[float, typer.Option("--moe-weight", help="Weight of the MoE load-balancing loss.")] = 0.01,
    seed: Seed = 0,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of the images held out for validation.")] = 0.25,
    min_detail: Annotated[float, typer.Option("--min-detail", help="Redraw crops flatter than this (mean difference "
                          "between neighbouring pixels, in 8-bit levels; up to 10 tries). 0: keep every crop.")] = 4.0,
    blur: Annotated[float, typer.Option("--blur", help="Restoration: largest Gaussian blur sigma before downscaling.")] = 0.0,
    noise: Annotated[float, typer.Option("--noise", help="Restoration: largest Gaussian noise sigma, in 8-bit levels.")] = 0.0,
    jpeg: Annotated[int, typer.Option("--jpeg", help="Restoration: lowest JPEG quality (0: no JPEG).")] = 0,
    degradation: Annotated[str, typer.Option("--degradation", help="How inputs are made from the photos: simple "
                           "(bicubic downscale, plus --blur/--noise/--jpeg when given) or real (blur, resize, Gaussian and "
                           "Poisson noise and JPEG, twice, in random strengths; ranges in docs/training.md).")] = "simple",
    clean_share: Annotated[float, typer.Option("--clean-share", help="With --degradation real: share of crops that are "
                           "only bicubic-downscaled, so clean inputs stay sharp.")] = 0.2,
    synthetic: Annotated[int, typer.Option("--synthetic", help="Generate this many synthetic images (dead leaves, text, "
                         "line art) and mix them with the photos. 0: photos only.")] = 0,
    synthetic_share: Annotated[float, typer.Option("--synthetic-share", help="Share of crops drawn from the synthetic "
                               "images (with --synthetic).")] = 0.3,
    init: Annotated[str, typer.Option("--init", help="Start from this checkpoint's weights (a path or bundled name; "
                    "tensors whose names and shapes match, e.g. another scale's body). Default: random.")] = "",
    ema: Annotated[float, typer.Option("--ema", help="Save an exponential moving average of the weights with this "
                   "decay (e.g. 0.999); 0: the last weights.")] = 0.0,
    precision: Annotated[str, typer.Option("--precision", help="auto (bf16 autocast where the CPU has AVX512-BF16 or "
                         "AMX, and on CUDA), fp32 or bf16. Master weights stay FP32.")] = "auto",
    val_every: Annotated[int, typer.Option("--val-every", help="Validate (PSNR-Y vs bicubic) every N steps.")] = 500,
    ckpt_every: Annotated[int, typer.Option("--ckpt-every", help="Write the checkpoint and resume state every N steps.")] = 500,
    log_every: Annotated[int, typer.Option("--log-every", help="Print a progress line every N steps (when there is no "
                         "progress bar, e.g. output to a file).")] = 50,
    stop_after: Annotated[int, typer.Option("--stop-after", help="Stop once N steps are done (the schedule still spans "
                          "--steps); continue later with --resume. 0: run to the end.")] = 0,
    threads: Annotated[int, typer.Option("--threads", help="CPU threads for torch (0: torch's default).")] = 0,
    device: Annotated[str, typer.Option("--device", help="Where to train: auto (CUDA when present), cpu or cuda.")] = "auto",
) -> None:
    """Train a model on image crops: L1 + FFT (+ SSIM) + MoE balance loss, AdamW with a cosine schedule.

    Each crop's input is its bicubic downscale (antialiased, 8-bit); --blur, --noise and --jpeg add restoration degradations.

    Validation: PSNR and SSIM on the Y channel of the held-out images, against bicubic upscaling. The checkpoint records the split, seed, steps and these figures.

    Example (how default-x2 is made): hrx train --arch hrx-s --scale 2 --steps 2000 --batch 8 --patch 128 --lr 2e-3 --seed 0 --threads 1 -o default-x2.safetensors
    """
    from hrx.train import TrainConfig
    from hrx.train import train as run_training

    cfg = TrainConfig(arch=arch, scale=scale, data=None if data is None else str(data), steps=steps, batch=batch,
                      patch=patch, lr=lr, min_lr=min_lr, weight_decay=weight_decay, warmup=warmup, grad_clip=grad_clip,
                      fft_weight=fft_weight, ssim_weight=ssim_weight, moe_weight=moe_weight, seed=seed,
                      val_fraction=val_fraction, min_detail=min_detail, blur=blur, noise=noise, jpeg=jpeg,
                      degradation=degradation, clean_share=clean_share, synthetic=synthetic,
                      synthetic_share=synthetic_share, init=init, ema=ema, precision=precision, val_every=val_every,
                      ckpt_every=ckpt_every, log_every=log_every, output=str(output), resume=resume, stop_after=stop_after,
                      threads=threads, device=device)
    result = run_training(cfg, TrainReporter(is_interactive(), log=lambda line: typer.echo(line, err=True)))
    if not result.finished:
        typer.echo(f"stopped at step {result.steps_done}/{cfg.steps}: wrote {result.output}; "
                   f"continue with the same command plus --resume")
        return
    from hrx.evaluate import summarize

    s = summarize(result.val_rows)
    typer.echo(f"wrote {result.output}: {result.steps_done} steps, val PSNR-Y {s.psnr_model:.2f} dB "
               f"(bicubic {s.psnr_bicubic:.2f}, {s.gain:+.2f} dB), SSIM-Y {s.ssim_model:.4f} (bicubic {s.ssim_bicubic:.4f})")
