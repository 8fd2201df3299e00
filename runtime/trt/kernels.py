"""PyTorch-callable entry points to the plugin kernels, and their ahead-of-time compilation.

``selective_scan(x, dt, A, B, C, D, chunk)`` matches :func:`hrx.blocks.ssm.selective_scan_ref`
and ``moe_top1(logits, experts)`` matches :func:`hrx.blocks.moe.top1_combine`; both take CUDA
tensors (FP32 or FP16 activations; the math is FP32) and run on the current CUDA stream. The
``*_into`` variants write into a given output (the TensorRT plugin's buffer).
``compile_*`` turn the same kernels into PTX for the plugins' AOT implementation.

Triton is imported inside these functions only (from :mod:`hrx.runtime.trt._triton_kernels`).
"""
from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from hrx.errors import HRXError, MissingDependencyError

if TYPE_CHECKING:
    import torch

SCAN_NUM_WARPS = 4
MOE_NUM_WARPS = 4
MOE_BLOCK = 256


@dataclass(frozen=True)
class ScanBlocks:
    T: int  # positions per chunk (any value gives the same result; >= 16 for tl.dot)
    BLOCK_N: int
    BLOCK_P: int


@dataclass(frozen=True)
class CompiledKernel:
    """A kernel compiled ahead of time for TensorRT: entry name, PTX and launch geometry."""

    name: str
    ptx: str
    grid: tuple[int, int, int]
    num_warps: int
    shared: int


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def scan_blocks(P: int, N: int, chunk: int) -> ScanBlocks:
    """Tile sizes of the scan kernel: tl.dot needs every matrix side >= 16."""
    return ScanBlocks(T=min(64, max(16, _pow2(chunk))), BLOCK_N=max(16, _pow2(N)), BLOCK_P=min(64, max(16, _pow2(P))))


def _kernels() -> ModuleType:
    from hrx.runtime.trt.env import triton_problem

    if importlib.util.find_spec("triton") is None:
        raise MissingDependencyError(f"the hrx plugin kernels need Triton: {triton_problem()}")
    return importlib.import_module("hrx.runtime.trt._triton_kernels")


def _check_cuda(*tensors: "torch.Tensor") -> None:
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":  # Triton's CPU interpreter (tests without a GPU)
        return
    for t in tensors:
        if not t.is_cuda:
            raise HRXError("the hrx plugin kernels take CUDA tensors")


def selective_scan_into(x: "torch.Tensor", dt: "torch.Tensor", A: "torch.Tensor", B: "torch.Tensor",
                        C: "torch.Tensor", D: "torch.Tensor", *, out: "torch.Tensor", chunk: int = 32,
                        dot_precision: str = "ieee") -> None:
    """``y [b, H, P, L]`` of the selective scan written into ``out`` (see ``selective_scan_ref``): channels
    first, ``x [b, H, P, L]``, ``dt [b, H, L]``, ``A, D [H]``, ``B, C [b, N, L]``."""
    if x.dim() != 4 or B.dim() != 3:
        raise HRXError(f"selective_scan: want x [b, H, P, L] and B [b, N, L], got x{tuple(x.shape)} B{tuple(B.shape)}")
    b, H, P, L = x.shape
    N = B.shape[1]
    if dt.shape != (b, H, L) or A.shape != (H,) or D.shape != (H,) or B.shape != (b, N, L) or C.shape != (b, N, L):
        raise HRXError(f"selective_scan: inconsistent shapes x{tuple(x.shape)} dt{tuple(dt.shape)} A{tuple(A.shape)} "
                       f"B{tuple(B.shape)} C{tuple(C.shape)} D{tuple(D.shape)}")
    if out.shape != x.shape:
        raise HRXError(f"selective_scan: out has shape {tuple(out.shape)}, want {tuple(x.shape)}")
    _check_cuda(x, dt, A, B, C, D, out)
    k = _kernels()
    blocks = scan_blocks(P, N, chunk)
    target = out if out.is_contiguous() else out.new_empty(out.shape)
    grid = (b * H, -(-P // blocks.BLOCK_P))
    k.selective_scan_kernel[grid](
        x.contiguous(), dt.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(), D.contiguous(), target,
        L=L, H=H, P=P, N=N, T=blocks.T, BLOCK_N=blocks.BLOCK_N, BLOCK_P=blocks.BLOCK_P,
        DOT_PRECISION=dot_precision, num_warps=SCAN_NUM_WARPS)
    if target is not out:
        out.copy_(target)


def selective_scan(x: "torch.Tensor", dt: "torch.Tensor", A: "torch.Tensor", B: "torch.Tensor",
                   C: "torch.Tensor", D: "torch.Tensor", chunk: int = 32) -> "torch.Tensor":
    """Same signature as the PyTorch scans (``hrx.blocks.ssm.ScanFn``); returns x's dtype."""
    import torch

    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    selective_scan_into(x, dt, A, B, C, D, out=out, chunk=chunk)
    return out


def moe_top1_into(logits: "torch.Tensor", experts: "torch.Tensor", *, out: "torch.Tensor") -> None:
    """``out [B, C, H, W] = softmax(logits)[argmax] * experts[argmax]`` per pixel (see ``top1_combine``)."""
    Bn, E, Hh, W = logits.shape
    if experts.dim() != 5 or experts.shape[:2] != (Bn, E) or experts.shape[3:] != (Hh, W):
        raise HRXError(f"moe_top1: logits{tuple(logits.shape)} and experts{tuple(experts.shape)} do not match")
    Cc = experts.shape[2]
    if out.shape != (Bn, Cc, Hh, W):
        raise HRXError(f"moe_top1: out has shape {tuple(out.shape)}, want {(Bn, Cc, Hh, W)}")
    _check_cuda(logits, experts, out)
    k = _kernels()
    target = out if out.is_contiguous() else out.new_empty(out.shape)
    grid = (-(-(Hh * W) // MOE_BLOCK), Bn)
    k.moe_top1_kernel[grid](logits.contiguous(), experts.contiguous(), target, E=E, C=Cc, HW=Hh * W,
                            BLOCK=MOE_BLOCK, num_warps=MOE_NUM_WARPS)
    if target is not out:
        out.copy_(target)


def moe_top1(logits: "torch.Tensor", experts: "torch.Tensor") -> "torch.Tensor":
    """Same contract as ``hrx.blocks.moe.top1_combine``; returns experts' dtype."""
    Bn, _, Cc, Hh, W = experts.shape
    out = experts.new_empty((Bn, Cc, Hh, W))
    moe_top1_into(logits, experts, out=out)
    return out


def register_torch_impls() -> None:
    """Register the Triton scan as ``"triton"``: ``hrx.blocks.ssm.use_scan_impl(model, "triton")`` then
    routes that model's SSMixer modules through it."""
    from hrx.blocks.ssm import register_scan_impl

    register_scan_impl("triton", selective_scan)


# --- ahead-of-time compilation (TensorRT AOT plugins) --------------------------------------------

_PTR = {"fp32": "*fp32", "fp16": "*fp16"}


def _target(compute_capability: str | None):
    from triton.backends.compiler import GPUTarget

    if compute_capability is None:
        import torch

        major, minor = torch.cuda.get_device_capability()
    else:
        major, minor = (int(v) for v in compute_capability.split("."))
    return GPUTarget("cuda", major * 10 + minor, 32)


def _compile(fn, pointers: dict[str, str], constexprs: dict[str, object], grid: tuple[int, int, int],
             num_warps: int, compute_capability: str | None) -> CompiledKernel:
    """Compile a Triton kernel to PTX for TensorRT: the kernel's own parameters only.

    Triton >= 3.3 takes a signature by parameter name with ``constexpr`` entries (older
    releases took ``constants=``). A kernel that needs Triton's global or profile scratch
    buffers is refused: TensorRT passes only the kernel's declared arguments.
    """
    import triton
    from triton.compiler import ASTSource

    signature = {**pointers, **dict.fromkeys(constexprs, "constexpr")}
    try:
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    except TypeError:  # Triton < 3.3
        src = ASTSource(fn=fn, signature=pointers, constants=constexprs)
    kernel = triton.compile(src, target=_target(compute_capability), options={"num_warps": num_warps})
    md = kernel.metadata
    if getattr(md, "global_scratch_size", 0) or getattr(md, "profile_scratch_size", 0):
        raise HRXError(f"{md.name}: this Triton build needs scratch memory, which TensorRT AOT plugins cannot "
                       "provide; build with --plugin-impl jit")
    ptx = kernel.asm["ptx"]
    ptx = trim_entry_params(ptx if isinstance(ptx, str) else ptx.decode(), md.name, len(pointers))
    return CompiledKernel(md.name, ptx, grid, md.num_warps, md.shared)


def trim_entry_params(ptx: str, entry: str, keep: int) -> str:
    """Drop the parameters past the first ``keep`` from the PTX entry ``entry``.

    Triton >= 3.3 appends ``global_scratch`` and ``profile_scratch`` pointers to every kernel;
    TensorRT launches an AOT kernel with its own arguments only (inputs, extra scalars, outputs).
    Unused trailing parameters are removed so the two agree; a used one is an error.
    """
    match = re.search(r"(\.entry\s+" + re.escape(entry) + r"\s*\()(.*?)(\))", ptx, re.S)
    if match is None:
        raise HRXError(f"{entry}: no such .entry in the compiled PTX")
    params = [p.strip() for p in match.group(2).split(",") if p.strip()]
    if len(params) <= keep:
        return ptx
    for p in params[keep:]:
        name = p.split()[-1]
        if len(re.findall(r"\b" + re.escape(name) + r"\b", ptx)) > 1:
            raise HRXError(f"{entry}: the compiled kernel uses its extra parameter {name}; "
                           "build with --plugin-impl jit")
    body = ",\n".join("\t" + p for p in params[:keep])
    return ptx[:match.start(2)] + "\n" + body + "\n" + ptx[match.end(2):]


def compile_selective_scan(x_shape: tuple[int, ...], N: int, chunk: int, io_dtype: str = "fp32",
                           compute_capability: str | None = None) -> CompiledKernel:
    """PTX of the scan for one static shape: x/B/C/y in ``io_dtype``, dt/A/D FP32 (the autotune combinations)."""
    b, H, P, L = x_shape
    blocks = scan_blocks(P, N, chunk)
    io = _PTR[io_dtype]
    pointers = {"x_ptr": io, "dt_ptr": "*fp32", "A_ptr": "*fp32", "B_ptr": io, "C_ptr": io, "D_ptr": "*fp32",
                "y_ptr": io}
    constexprs = {"L": L, "H": H, "P": P, "N": N, "T": blocks.T, "BLOCK_N": blocks.BLOCK_N,
                  "BLOCK_P": blocks.BLOCK_P, "DOT_PRECISION": "ieee"}
    grid = (b * H, -(-P // blocks.BLOCK_P), 1)
    return _compile(_kernels().selective_scan_kernel, pointers, constexprs, grid, SCAN_NUM_WARPS, compute_capability)


def compile_moe_top1(experts_shape: tuple[int, ...], logits_dtype: str = "fp32", io_dtype: str = "fp32",
                     compute_capability: str | None = None) -> CompiledKernel:
    """The MoETop1 Triton kernel compiled for ``experts_shape [B, E, C, H, W]`` and the given dtypes."""
    Bn, E, Cc, Hh, W = experts_shape
    pointers = {"logits_ptr": _PTR[logits_dtype], "experts_ptr": _PTR[io_dtype], "out_ptr": _PTR[io_dtype]}
    constexprs = {"E": E, "C": Cc, "HW": Hh * W, "BLOCK": MOE_BLOCK}
    grid = (-(-(Hh * W) // MOE_BLOCK), Bn, 1)
    return _compile(_kernels().moe_top1_kernel, pointers, constexprs, grid, MOE_NUM_WARPS, compute_capability)
