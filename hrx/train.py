"""``hrx train``: train a restoration / super-resolution model on image crops.

One run = a :class:`TrainConfig`. The loop:

* data: :mod:`hrx.data` (fixed by-image split, random crops, seeded degradation);
* loss: L1 + ``fft_weight`` * FFT loss (+ ``ssim_weight`` * (1 - SSIM)) + ``moe_weight`` * MoE balance;
* AdamW, linear warm-up then cosine decay to ``min_lr`` (a pure function of the step), gradient-norm
  clipping;
* every ``val_every`` steps: Y-PSNR / SSIM against bicubic on the held-out images
  (:mod:`hrx.evaluate`); every ``ckpt_every`` steps: the model (``hrx.save_model``, atomic) and a
  resume state next to it (``<output stem>.resume.pt``: weights, optimizer, step, RNG states).
  ``resume=True`` continues from that state exactly: the same weights as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hrx.data import SKIMAGE_SOURCE, DataSplit, Degradation, PatchSampler, list_images, load_image, split_images
from hrx.errors import HRXError, check_choice
from hrx.paths import atomic_write
from hrx.evaluate import EvalRow, evaluate, summarize
from hrx.losses import fft_loss, l1_loss, moe_balance_loss, ssim

DEVICES = ("auto", "cpu", "cuda")
DEGRADATIONS = ("simple", "real")  # hrx.data.Degradation, hrx.degradations.RealDegradation
TRAIN_PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 autocast where the CPU has AVX512-BF16 or AMX (or on CUDA)
STATE_FORMAT = "hrx-train-state"
STATE_VERSION = 2

# Fields that shape the trajectory: a resumed run must have the same values.
TRAJECTORY_FIELDS = ("arch", "scale", "data", "steps", "batch", "patch", "lr", "min_lr", "weight_decay", "warmup",
                     "grad_clip", "fft_weight", "ssim_weight", "moe_weight", "seed", "val_fraction", "min_detail", "blur",
                     "noise", "jpeg", "degradation", "clean_share", "synthetic", "synthetic_share", "init", "ema",
                     "precision")


@dataclass
class TrainConfig:
    arch: str = "hrx-s"
    scale: int = 2
    data: str | None = None  # a folder of images; None: scikit-image's bundled photos
    steps: int = 2000
    batch: int = 8
    patch: int = 128  # HR crop side; patch / scale must be a multiple of the model's size_multiple
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 1e-4
    warmup: int = 100
    grad_clip: float = 1.0
    fft_weight: float = 0.05
    ssim_weight: float = 0.0
    moe_weight: float = 0.01
    seed: int = 0
    val_fraction: float = 0.25
    min_detail: float = 4.0  # redraw crops flatter than this (mean neighbour difference, 8-bit levels)
    blur: float = 0.0
    noise: float = 0.0
    jpeg: int = 0
    degradation: str = "simple"  # simple: --blur/--noise/--jpeg; real: hrx.degradations.RealDegradation
    clean_share: float = 0.2  # real: share of crops that are only bicubic-downscaled
    synthetic: int = 0  # synthetic training images to generate (hrx.synthetic); 0: none
    synthetic_share: float = 0.3  # share of crops drawn from them (when synthetic > 0)
    init: str = ""  # start from this checkpoint's weights (tensors of matching shape); "": random init
    ema: float = 0.0  # decay of the weights' exponential moving average saved as the model; 0: off
    precision: str = "auto"  # auto | fp32 | bf16 (autocast, FP32 master weights)
    val_every: int = 500
    ckpt_every: int = 500
    log_every: int = 50
    output: str = "model.pt"
    resume: bool = False
    stop_after: int = 0  # stop (resumably) once this many steps are done; 0: run to `steps`
    threads: int = 0  # torch CPU threads; 0: leave torch's default
    device: str = "auto"  # auto | cpu | cuda

    def __post_init__(self) -> None:
        if self.data == SKIMAGE_SOURCE:  # one spelling of the default data in configs and resume checks
            self.data = None
        for name in ("steps", "batch", "patch", "val_every", "ckpt_every", "log_every"):
            if getattr(self, name) < 1:
                raise HRXError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise HRXError(f"learning rates must satisfy 0 <= min_lr <= lr and lr > 0 (lr={self.lr}, min_lr={self.min_lr})")
        if self.warmup < 0 or self.grad_clip < 0 or self.stop_after < 0 or self.threads < 0:
            raise HRXError("warmup, grad_clip, stop_after and threads must be >= 0")
        check_choice("device", self.device, DEVICES)
        check_choice("degradation", self.degradation, DEGRADATIONS)
        check_choice("precision", self.precision, TRAIN_PRECISIONS)
        if not 0.0 <= self.clean_share <= 1.0 or not 0.0 <= self.synthetic_share <= 1.0:
            raise HRXError(f"clean share and synthetic share must be in [0, 1] "
                           f"(clean_share={self.clean_share}, synthetic_share={self.synthetic_share})")
        if self.synthetic < 0:
            raise HRXError(f"synthetic must be >= 0 images, not {self.synthetic}")
        if not 0.0 <= self.ema < 1.0:
            raise HRXError(f"ema must be in [0, 1) (0: off), not {self.ema}")
        if self.degradation == "real" and (self.blur or self.noise or self.jpeg):
            raise HRXError("--blur/--noise/--jpeg belong to --degradation simple; --degradation real draws its own")
        if self.blur > 20 or self.noise > 100:
            raise HRXError(f"blur sigma must be <= 20 pixels and noise sigma <= 100 levels (blur={self.blur}, "
                           f"noise={self.noise})")

    @property
    def resume_path(self) -> Path:
        """The resume state written next to the output: ``model.pt`` -> ``model.resume.pt``."""
        out = Path(self.output)
        return out.with_name(out.name.split(".")[0] + ".resume.pt")

    def trajectory(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in TRAJECTORY_FIELDS}

    def command_line(self) -> str:
        """The ``hrx train`` command that reproduces this run: every field that shapes the trajectory
        is written out, defaults included, so a later change of a default cannot change the result."""
        parts = ["hrx train"]
        for k in TRAJECTORY_FIELDS:
            v = getattr(self, k)
            if k == "data" and v is None:
                v = "skimage"
            if k == "init" and not v:
                continue
            parts.append(f"--{k.replace('_', '-')} {v:g}" if isinstance(v, float) else f"--{k.replace('_', '-')} {v}")
        if self.threads:
            parts.append(f"--threads {self.threads}")
        parts.append(f"-o {self.output}")
        return " ".join(parts)


@dataclass(frozen=True)
class TrainResult:
    output: Path
    steps_done: int
    finished: bool
    val_rows: list[EvalRow]
    last_loss: float


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warm-up, then cosine to ``min_lr``."""
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * min(1.0, t)))


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise HRXError("device cuda: no CUDA device is available to torch")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def cpu_bf16() -> bool:
    """Whether this CPU computes BF16 natively (AVX512-BF16 or AMX): where autocast to bf16 pays."""
    from hrx.cpu import bf16_native, cpu_flags

    return bf16_native(cpu_flags())


def train_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype:
    """The autocast dtype of the forward pass: bf16 when asked, or under auto on a BF16 CPU or CUDA."""
    if cfg.precision == "bf16" or (cfg.precision == "auto" and (device.type == "cuda" or cpu_bf16())):
        return torch.bfloat16
    return torch.float32


def training_loss(model: nn.Module, lr: torch.Tensor, hr: torch.Tensor, cfg: TrainConfig,
                  dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict[str, float]]:
    """Forward the batch (under bf16 autocast when ``dtype`` is bf16; the loss in FP32) and return the
    total loss and its parts."""
    with torch.autocast(lr.device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        pred = model(lr)
    pred = pred.float()
    parts: dict[str, torch.Tensor] = {"l1": l1_loss(pred, hr)}
    if cfg.fft_weight:
        parts["fft"] = cfg.fft_weight * fft_loss(pred, hr)
    if cfg.ssim_weight:
        parts["ssim"] = cfg.ssim_weight * (1.0 - ssim(pred, hr))
    if cfg.moe_weight:
        parts["moe"] = cfg.moe_weight * moe_balance_loss(model).to(pred.device)
    total = torch.stack([p.float() for p in parts.values()]).sum()
    return total, {k: float(v.detach()) for k, v in parts.items()}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def _load_state(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    if not path.is_file():
        raise HRXError(f"{path}: no resume state to continue from (it is written every ckpt_every steps)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds here
        raise HRXError(f"{path}: not a readable resume state ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise HRXError(f"{path}: not an hrx training resume state")
    saved = state["config"]
    for k, v in cfg.trajectory().items():
        if saved.get(k) != v:
            raise HRXError(f"{path}: resume with a different {k} ({v!r}; the run was started with {saved.get(k)!r})")
    return state


class TrainEvents:
    """What a run reports while it trains. This base ignores everything; ``hrx train`` (in
    :mod:`hrx.cli.train`) draws a progress bar or prints log lines from it."""

    def started(self, cfg: TrainConfig, summary: str, step: int) -> None:
        """Before the first step: ``summary`` names the model, device and data; ``step`` > 0 on resume."""

    def stepped(self, step: int, loss: float, lr: float, seconds: float) -> None:
        """After optimizer step ``step`` (1-based): running mean loss, the step's lr and duration."""

    def validated(self, step: int, rows: list[EvalRow]) -> None:
        """After validation at ``step``: one row per held-out image."""

    def warning(self, message: str) -> None:
        """Something the user should act on (e.g. a model that still equals bicubic)."""

    def close(self) -> None:
        """The run ended (finished, stopped or failed)."""


def _extra(cfg: TrainConfig, split: DataSplit, step: int, rows: list[EvalRow], history: list[list[float]],
           seconds: float, skipped: list[str], cond_rows: dict[str, list[EvalRow]] | None = None,
           deg_record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Training metadata stored in the checkpoint (``hrx models`` reads ``val_psnr*``)."""
    from hrx import __version__

    s = summarize(rows) if rows else None
    extra: dict[str, Any] = {
        "arch": cfg.arch, "scale": cfg.scale, "steps": step, "total_steps": cfg.steps, "seed": cfg.seed,
        "data": cfg.data or "skimage", "split": split.names(), "skipped_small_images": skipped,
        "batch": cfg.batch, "patch": cfg.patch, "config": dataclasses.asdict(cfg),
        "degradation": deg_record or {"downscale": "bicubic antialias (torch), 8-bit", "blur": cfg.blur,
                                      "noise": cfg.noise, "jpeg": cfg.jpeg},
        "command": cfg.command_line(), "train_seconds": round(seconds, 1), "hrx_version": __version__,
        "history": history,
    }
    if s is not None:
        extra.update(val_psnr=round(s.psnr_model, 4), val_psnr_bicubic=round(s.psnr_bicubic, 4),
                     val_ssim=round(s.ssim_model, 5), val_ssim_bicubic=round(s.ssim_bicubic, 5),
                     val_metric="PSNR/SSIM on Y (BT.601), border = scale, vs bicubic of the bicubic-downscaled input",
                     val_rows=[r.as_dict() for r in rows])
    if cond_rows:
        extra["val_conditions"] = {name: {"psnr": round(summarize(r).psnr_model, 4),
                                          "psnr_input": round(summarize(r).psnr_bicubic, 4),
                                          "ssim": round(summarize(r).ssim_model, 5),
                                          "ssim_input": round(summarize(r).ssim_bicubic, 5)}
                                   for name, r in cond_rows.items()}
    return extra


@dataclass
class _Run:
    """Everything a run holds between steps."""

    model: nn.Module
    device: torch.device
    opt: torch.optim.Optimizer
    sampler: PatchSampler
    split: DataSplit
    val_imgs: list
    ema: nn.Module | None = None  # the averaged weights (saved as the model), when cfg.ema > 0
    dtype: torch.dtype = torch.float32
    deg_record: dict[str, Any] = dataclasses.field(default_factory=dict)
    cond_rows: dict[str, list[EvalRow]] = dataclasses.field(default_factory=dict)
    step: int = 0
    seconds: float = 0.0
    history: list[list[float]] = dataclasses.field(default_factory=list)
    rows: list[EvalRow] = dataclasses.field(default_factory=list)
    loss_avg: float = float("nan")


def build_model(cfg: TrainConfig) -> nn.Module:
    """The seeded, untrained model; the patch must tile into its ``size_multiple``."""
    import hrx

    torch.manual_seed(cfg.seed)
    try:
        model = hrx.create_model(cfg.arch, scale=cfg.scale)
    except (KeyError, ValueError, TypeError) as e:
        raise HRXError(str(e).strip("'\"")) from None
    lr_side = cfg.patch // cfg.scale
    if cfg.patch % cfg.scale or lr_side % model.size_multiple:
        good = cfg.scale * model.size_multiple * max(1, round(lr_side / model.size_multiple))
        raise HRXError(f"patch {cfg.patch}: patch / scale must be a multiple of {model.size_multiple} for {cfg.arch} "
                       f"(e.g. patch {good})")
    if cfg.init:
        init_from(model, cfg.init, cfg.arch)
    return model


REFINE_PREFIX = "head.refine."  # the last conv of the reconstruction head (hrx.blocks.head)


def init_from(model: nn.Module, ref: str, arch: str) -> int:
    """Copy the tensors of checkpoint ``ref`` (a path or bundled name, of architecture ``arch`` like
    ``model``) whose names and shapes match ``model``'s (fine-tuning, or another scale's body). From another
    scale, the head's last conv (``head.refine``) stays at zero, as initialised: it reads the upsampler's
    output, which another scale computes differently (its own upsampler does not match and stays as
    initialised; at x1 there is none), so the model starts as bicubic and not as a wrong residual.
    Returns how many tensors were copied; none is an error."""
    from hrx.checkpoint import read_checkpoint

    their_arch, config, state, _ = read_checkpoint(ref)
    if their_arch != arch:
        raise HRXError(f"{ref}: a {their_arch} checkpoint cannot initialise {arch}; --init needs the same architecture")
    own = model.state_dict()
    other_scale = config.get("scale") != getattr(model, "scale", config.get("scale"))
    match = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape
             and not (other_scale and k.startswith(REFINE_PREFIX))}
    if not match:
        raise HRXError(f"{ref}: no tensor matches this model's names and shapes; --init needs the same architecture")
    model.load_state_dict(match, strict=False)
    return len(match)


def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """``ema = d * ema + (1 - d) * model`` with ``d = min(decay, (1 + step) / (10 + step))`` (a short
    warm-up, so early checkpoints are not dominated by the initial weights); buffers are copied."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on conv / linear weights only (not on biases, norms, scales)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99))


def _prepare(cfg: TrainConfig) -> _Run:
    """Model, data (split, sampler, validation images) and optimizer; restored from the resume
    state when ``cfg.resume``."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    model = build_model(cfg)
    split = split_images(list_images(cfg.data), cfg.seed, cfg.val_fraction)
    train_imgs = [(r.name, load_image(r.path)) for r in split.train]
    val_imgs = [(r.name, load_image(r.path)) for r in split.val]
    deg, deg_record = make_degradation(cfg)
    synthetic = []
    if cfg.synthetic:
        from hrx.synthetic import font_files, synthetic_images

        synthetic = synthetic_images(cfg.synthetic, cfg.seed)
        deg_record["synthetic"] = {"images": cfg.synthetic, "share": cfg.synthetic_share, "side": 384,
                                   "fonts": [p.name for p in font_files()]}
    sampler = PatchSampler(train_imgs, cfg.patch, deg, cfg.seed, min_detail=cfg.min_detail, extra=synthetic,
                           extra_share=cfg.synthetic_share if cfg.synthetic else 0.0)
    model.to(device)
    ema = None
    if cfg.ema:
        import copy

        ema = copy.deepcopy(model).eval()
        for p in ema.parameters():
            p.requires_grad_(False)
    run = _Run(model, device, make_optimizer(model, cfg), sampler, split, val_imgs, ema=ema,
               dtype=train_dtype(cfg, device), deg_record=deg_record)
    if cfg.resume:
        _restore(run, _load_state(cfg.resume_path, cfg))
    return run


def make_degradation(cfg: TrainConfig) -> tuple[Any, dict[str, Any]]:
    """The HR -> LR chain of the run and its record for the checkpoint's metadata."""
    if cfg.degradation == "real":
        from hrx.degradations import RealDegradation

        deg = RealDegradation.for_scale(cfg.scale, clean_share=cfg.clean_share)
        return deg, {"kind": "real", **deg.as_dict()}
    return Degradation(cfg.scale, cfg.blur, cfg.noise, cfg.jpeg), {
        "kind": "simple", "downscale": "bicubic antialias (torch), 8-bit", "blur": cfg.blur, "noise": cfg.noise,
        "jpeg": cfg.jpeg}


def _restore(run: _Run, state: dict[str, Any]) -> None:
    run.model.load_state_dict(state["model"])
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    run.opt.load_state_dict(state["optimizer"])
    run.sampler.set_state(state["data_rng"])
    torch.set_rng_state(state["torch_rng"])
    if run.device.type == "cuda" and state.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(state["cuda_rng"], run.device)
    run.step, run.history, run.seconds = int(state["step"]), list(state["history"]), float(state["seconds"])


def _summary(cfg: TrainConfig, run: _Run) -> str:
    where = "skimage bundled photos" if cfg.data is None else cfg.data
    n = sum(p.numel() for p in run.model.parameters())
    extra = f" + {cfg.synthetic} synthetic ({cfg.synthetic_share:.0%} of crops)" if cfg.synthetic else ""
    return (f"{cfg.arch} x{cfg.scale} ({n:,} parameters) on {run.device}, {str(run.dtype).replace('torch.', '')}; "
            f"{cfg.degradation} degradation; data {where}: {len(run.split.train)} train "
            f"images{extra}, {len(run.split.val)} val ({', '.join(r.name for r in run.split.val)})"
            + (f"; resuming at step {run.step}" if cfg.resume else ""))


def _train_step(run: _Run, cfg: TrainConfig) -> float:
    """One optimizer step on a fresh batch of crops; returns its loss."""
    run.model.train()
    lr = lr_at(run.step, cfg)
    for group in run.opt.param_groups:
        group["lr"] = lr
    lr_b, hr_b = run.sampler.batch(cfg.batch)
    loss, _ = training_loss(run.model, lr_b.to(run.device), hr_b.to(run.device), cfg, run.dtype)
    if not torch.isfinite(loss):
        raise HRXError(f"loss became {float(loss.detach())} at step {run.step + 1}; lower lr or grad_clip")
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.opt.step()
    if run.ema is not None:
        ema_update(run.ema, run.model, cfg.ema, run.step)
    run.step += 1
    return float(loss.detach())


def _validate(run: _Run, cfg: TrainConfig, events: TrainEvents) -> None:
    """Y-PSNR / SSIM vs bicubic on the held-out images. Evaluation draws no random numbers, so
    validating does not change the training trajectory."""
    model = run.ema if run.ema is not None else run.model
    if cfg.degradation == "real" or cfg.scale == 1:
        from hrx.degradations import EVAL_CONDITIONS

        run.cond_rows = {c.name: evaluate(model, run.val_imgs, cfg.scale, condition=c)
                         for c in EVAL_CONDITIONS if c.name != "clean"}
    # x1: a clean input is the target itself, so the validation rows are those of the degraded inputs
    run.rows = (evaluate(model, run.val_imgs, cfg.scale) if cfg.scale > 1 else
                [dataclasses.replace(r, image=f"{r.image} ({name})") for name, rows in run.cond_rows.items()
                 for r in rows])
    s = summarize(run.rows)
    row = [run.step, round(run.loss_avg, 6), round(s.psnr_model, 4), round(s.psnr_bicubic, 4)]
    if run.cond_rows:
        degraded = [summarize(r) for r in run.cond_rows.values()]
        row += [round(sum(d.gain for d in degraded) / len(degraded), 4)]
    run.history.append(row)
    events.validated(run.step, run.rows)
    if run.step >= max(500, 2 * cfg.warmup) and abs(s.gain) < 0.005:
        events.warning(f"at step {run.step} the model still equals bicubic (gain {s.gain:+.3f} dB); its head may "
                       "have collapsed (dead activations), try a lower lr")


def _checkpoint(run: _Run, cfg: TrainConfig) -> None:
    """The model (with its training metadata) and the resume state, both written atomically."""
    import hrx

    model = run.ema if run.ema is not None else run.model
    hrx.save_model(model, cfg.output, extra=_extra(cfg, run.split, run.step, run.rows, run.history, run.seconds,
                                                   run.sampler.skipped, run.cond_rows, run.deg_record))
    _save_state(cfg.resume_path, {
        "format": STATE_FORMAT, "version": STATE_VERSION, "step": run.step, "config": cfg.trajectory(),
        "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
        "ema": {k: v.detach().cpu() for k, v in run.ema.state_dict().items()} if run.ema is not None else None,
        "optimizer": run.opt.state_dict(), "data_rng": run.sampler.get_state(), "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None,
        "history": run.history, "seconds": run.seconds})


def train(cfg: TrainConfig, events: TrainEvents | None = None) -> TrainResult:
    """Run (or continue, with ``cfg.resume``) a training; ``events`` hears about its progress.
    Ctrl-C: ``resume`` continues from the last checkpoint (every ``ckpt_every`` steps)."""
    events = events or TrainEvents()
    run = _prepare(cfg)
    events.started(cfg, _summary(cfg, run), run.step)
    end = min(cfg.steps, cfg.stop_after) if cfg.stop_after else cfg.steps
    loss_sum, loss_n = 0.0, 0
    try:
        while run.step < end:
            t0 = time.perf_counter()
            loss = _train_step(run, cfg)
            dt = time.perf_counter() - t0
            run.seconds += dt
            loss_sum, loss_n = loss_sum + loss, loss_n + 1
            run.loss_avg = loss_sum / loss_n
            events.stepped(run.step, run.loss_avg, lr_at(run.step - 1, cfg), dt)
            if run.step % cfg.log_every == 0:
                loss_sum, loss_n = 0.0, 0
            if run.step % cfg.val_every == 0 or run.step == cfg.steps:
                _validate(run, cfg, events)
            if run.step % cfg.ckpt_every == 0 or run.step == end:
                _checkpoint(run, cfg)
    finally:
        events.close()
    if run.step == cfg.steps and not run.rows:  # resumed a run that had finished: report its validation again
        run.rows = evaluate(run.ema if run.ema is not None else run.model, run.val_imgs, cfg.scale)
    return TrainResult(Path(cfg.output), run.step, run.step == cfg.steps, run.rows, run.loss_avg)
