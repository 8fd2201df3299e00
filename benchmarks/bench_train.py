"""Training speed: optimizer steps per second of ``hrx train``'s step (forward, loss, backward, AdamW) in FP32
and under BF16 autocast, on the same preset and batch, interleaved in one run.

    python benchmarks/bench_train.py                                 # hrx-s x2, batch 8, patch 128, all cores
    python benchmarks/bench_train.py --arch hrx-s --scale 4 --batch 12 --rounds 5

BF16 pays where the CPU computes it natively (AVX512-BF16 or AMX: ``hrx train --precision auto`` picks it
there); elsewhere PyTorch emulates it and it is slower. Data preparation (crops, degradations) is left out:
the batch is fixed, so only the model's arithmetic is timed. Writes ``benchmarks/results/train_speed.json``.
"""
from __future__ import annotations

import argparse
import time

import torch

import hrx
from hrx.train import TrainConfig, cpu_bf16, make_optimizer, training_loss


def step_seconds(model: torch.nn.Module, opt: torch.optim.Optimizer, lr: torch.Tensor, hr: torch.Tensor,
                 cfg: TrainConfig, dtype: torch.dtype, steps: int) -> float:
    """Mean seconds of ``steps`` training steps."""
    t = time.perf_counter()
    for _ in range(steps):
        loss, _ = training_loss(model, lr, hr, cfg, dtype)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="hrx-s")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="steps per timing")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(arch=args.arch, scale=args.scale, batch=args.batch, patch=args.patch)
    g = torch.Generator().manual_seed(0)
    hr = torch.rand((args.batch, 3, args.patch, args.patch), generator=g)
    lr = torch.nn.functional.interpolate(hr, scale_factor=1 / args.scale, mode="area") if args.scale > 1 else hr
    runs = {"fp32": torch.float32, "bf16": torch.bfloat16}
    state = {}
    for name in runs:
        torch.manual_seed(0)
        model = hrx.create_model(args.arch, scale=args.scale).train()
        state[name] = (model, make_optimizer(model, cfg))
        step_seconds(*state[name], lr, hr, cfg, runs[name], 1)  # warm-up
    times: dict[str, list[float]] = {n: [] for n in runs}
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for name in order:
            times[name].append(step_seconds(*state[name], lr, hr, cfg, runs[name], args.steps))
    rows = []
    med = {n: sorted(v)[len(v) // 2] for n, v in times.items()}
    for name in runs:
        rows.append({"arch": args.arch, "scale": args.scale, "batch": args.batch, "patch": args.patch,
                     "precision": name, "steps_per_s": round(1 / med[name], 3),
                     "speedup_vs_fp32": round(med["fp32"] / med[name], 3), "cpu_bf16": cpu_bf16()})
        print(f"{name}: {1 / med[name]:.3f} steps/s (median of {args.rounds}), {med['fp32'] / med[name]:.2f}x fp32")
    from results import save

    save("train_speed", rows, params={"arch": args.arch, "scale": args.scale, "batch": args.batch,
                                      "patch": args.patch, "rounds": args.rounds,
                                      "threads": args.threads or torch.get_num_threads()})


if __name__ == "__main__":
    main()
