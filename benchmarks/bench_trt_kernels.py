"""Speed of the TensorRT plugin kernels (Triton) against the PyTorch implementations they replace.

    python benchmarks/bench_trt_kernels.py              # default shapes (hrx-t / hrx-s at tile 256)
    python benchmarks/bench_trt_kernels.py --fp16 --iters 50

Selective scan: the Triton kernel vs ``selective_scan_chunked`` (what ``--ops native`` exports) and,
for the smallest case, the sequential ``selective_scan_ref``. MoE top-1: the Triton kernel vs
``top1_combine``. Each row also checks the kernel's max abs error against the PyTorch result.
Prints a markdown table; without a CUDA device (or Triton) it says so and exits 0.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
from typing import Callable

import torch

# (label, b, L, H, P, N, chunk): b = 4 scan orders x batch, L = (tile / 4)^2
SCAN_CASES = [
    ("hrx-t tile 128", 4, 1024, 4, 8, 4, 16),
    ("hrx-t tile 256", 4, 4096, 4, 8, 4, 16),
    ("hrx-s tile 256, batch 4", 16, 4096, 8, 16, 8, 32),
]
# (label, B, E, C, H, W)
MOE_CASES = [
    ("hrx-t tile 256", 1, 4, 32, 64, 64),
    ("hrx-s tile 256, batch 4", 4, 4, 64, 64, 64),
]


def cuda_ms(fn: Callable[..., object], args: tuple, iters: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn(*args)`` on the current stream (CUDA events)."""
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_scan(iters: int, dtype: torch.dtype) -> list[dict]:
    from hrx.blocks.ssm import selective_scan_chunked, selective_scan_ref
    from hrx.runtime.trt import kernels

    rows = []
    for i, (label, b, L, H, P, N, chunk) in enumerate(SCAN_CASES):
        g = torch.Generator(device="cuda").manual_seed(0)
        x = torch.randn(b, H, P, L, device="cuda", generator=g).to(dtype)  # channels first
        dt = torch.nn.functional.softplus(torch.randn(b, H, L, device="cuda", generator=g)) * 0.1
        A = -(torch.rand(H, device="cuda", generator=g) * 3 + 0.1)
        B = torch.randn(b, N, L, device="cuda", generator=g).to(dtype)
        C = torch.randn(b, N, L, device="cuda", generator=g).to(dtype)
        D = torch.randn(H, device="cuda", generator=g)
        args = (x, dt, A, B, C, D, chunk)
        ours = cuda_ms(kernels.selective_scan, args, iters)
        chunked = cuda_ms(selective_scan_chunked, args, iters)
        want = selective_scan_chunked(x.float(), dt, A, B.float(), C.float(), D, chunk)
        err = (kernels.selective_scan(*args).float() - want).abs().max().item()
        ref = cuda_ms(selective_scan_ref, args, max(1, iters // 10), 1) if i == 0 else None
        rows.append({"case": f"scan {label} [{b}, {H}, {P}, {L}] N={N}", "triton_ms": ours, "pytorch_ms": chunked,
                     "sequential_ref_ms": ref, "speed_up": chunked / ours, "max_abs_err": err})
    return rows


def bench_moe(iters: int, dtype: torch.dtype) -> list[dict]:
    from hrx.blocks.moe import top1_combine
    from hrx.runtime.trt import kernels

    rows = []
    for label, Bn, E, C, H, W in MOE_CASES:
        g = torch.Generator(device="cuda").manual_seed(0)
        logits = torch.randn(Bn, E, H, W, device="cuda", generator=g)
        experts = torch.randn(Bn, E, C, H, W, device="cuda", generator=g).to(dtype)
        ours = cuda_ms(kernels.moe_top1, (logits, experts), iters)
        torch_ms = cuda_ms(top1_combine, (logits, experts), iters)
        err = (kernels.moe_top1(logits, experts).float() - top1_combine(logits, experts).float()).abs().max().item()
        rows.append({"case": f"moe {label} [{Bn}, {E}, {C}, {H}, {W}]", "triton_ms": ours, "pytorch_ms": torch_ms,
                     "sequential_ref_ms": None, "speed_up": torch_ms / ours, "max_abs_err": err})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--fp16", action="store_true", help="FP16 activations (the scan still computes in FP32)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"skipped: no CUDA device (PyTorch {torch.__version__})")
        return
    if importlib.util.find_spec("triton") is None:
        print("skipped: Triton is not installed")
        return
    dtype = torch.float16 if args.fp16 else torch.float32
    print(f"{torch.cuda.get_device_name()}, PyTorch {torch.__version__}, activations {dtype}, median of {args.iters}")
    print()
    print("| case | Triton ms | PyTorch ms | sequential ref ms | speed-up | max abs err |")
    print("|---|---|---|---|---|---|")
    rows = bench_scan(args.iters, dtype) + bench_moe(args.iters, dtype)
    for r in rows:
        ref = "-" if r["sequential_ref_ms"] is None else f"{r['sequential_ref_ms']:.2f}"
        print(f"| {r['case']} | {r['triton_ms']:.3f} | {r['pytorch_ms']:.3f} | {ref} | {r['speed_up']:.1f}x | "
              f"{r['max_abs_err']:.1e} |")
    from results import save

    save("trt_kernels" + ("_fp16" if args.fp16 else ""), rows,
         params={"gpu": torch.cuda.get_device_name(), "dtype": str(dtype), "iters": args.iters})


if __name__ == "__main__":
    main()
