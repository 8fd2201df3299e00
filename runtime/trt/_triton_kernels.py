"""Triton kernels behind the ``hrx::`` TensorRT plugins.

Imported only through :mod:`hrx.runtime.trt.kernels` (which checks that Triton is there). All
shapes are compile-time constants: HRX engines have one static input shape, and the AOT path
compiles one PTX per engine. Every kernel takes its input pointers first and its output pointer
last (the argument order TensorRT's AOT plugin launch expects, extra scalar arguments between).
"""
import triton
import triton.language as tl


@triton.jit
def selective_scan_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr,
                          L: tl.constexpr, H: tl.constexpr, P: tl.constexpr, N: tl.constexpr,
                          T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr,
                          DOT_PRECISION: tl.constexpr):
    """One program per (batch, head, block of P): the chunked SSD scan, chunks taken in order.

    Channels first, the sequence axis last: x, y ``[b, H, P, L]``, dt ``[b, H, L]``, B, C ``[b, N, L]``.

    Inside a chunk of T positions (all FP32, a = dt * A <= 0, s = cumsum(a)):
        y_i   = sum_{j<=i} (C_i . B_j) exp(s_i - s_j) dt_j x_j + exp(s_i) C_i . state + D x_i
        state = exp(s_T) state + sum_j exp(s_T - s_j) dt_j B_j (outer) x_j
    Every exponent is <= 0, so nothing overflows; positions past L load dt = 0 (no effect).
    """
    pid_bh = tl.program_id(0)
    pid_p = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_t = tl.arange(0, T)
    offs_n = tl.arange(0, BLOCK_N)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    mask_n = offs_n < N
    mask_p = offs_p < P
    a_h = tl.load(A_ptr + h).to(tl.float32)
    d_h = tl.load(D_ptr + h).to(tl.float32)
    causal = offs_t[:, None] >= offs_t[None, :]
    state = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)  # [N, P]
    for start in range(0, L, T):
        t = start + offs_t
        mask_t = t < L
        dt = tl.load(dt_ptr + (b * H + h) * L + t, mask=mask_t, other=0.0).to(tl.float32)  # [T]
        xy_off = ((b * H + h) * P + offs_p[None, :]) * L + t[:, None]  # [T, P] tile of x [b, H, P, L]
        xy_mask = mask_t[:, None] & mask_p[None, :]
        x = tl.load(x_ptr + xy_off, mask=xy_mask, other=0.0).to(tl.float32)  # [T, P]
        bc_off = (b * N + offs_n[None, :]) * L + t[:, None]  # [T, N] tile of B, C [b, N, L]
        bc_mask = mask_t[:, None] & mask_n[None, :]
        Bm = tl.load(B_ptr + bc_off, mask=bc_mask, other=0.0).to(tl.float32)  # [T, N]
        Cm = tl.load(C_ptr + bc_off, mask=bc_mask, other=0.0).to(tl.float32)  # [T, N]
        a = dt * a_h
        a_cum = tl.cumsum(a, axis=0)  # [T]
        xs = x * dt[:, None]
        seg = tl.where(causal, a_cum[:, None] - a_cum[None, :], float("-inf"))  # [T, T]
        scores = tl.dot(Cm, tl.trans(Bm), input_precision=DOT_PRECISION) * tl.exp(seg)
        y = tl.dot(scores, xs, input_precision=DOT_PRECISION)  # [T, P]
        y += tl.exp(a_cum)[:, None] * tl.dot(Cm, state, input_precision=DOT_PRECISION)
        y += d_h * x
        tl.store(y_ptr + xy_off, y.to(y_ptr.dtype.element_ty), mask=xy_mask)
        a_end = tl.sum(a, axis=0)
        w = tl.exp(a_end - a_cum)  # [T]
        state = state * tl.exp(a_end) + tl.dot(tl.trans(Bm * w[:, None]), xs, input_precision=DOT_PRECISION)


@triton.jit
def moe_top1_kernel(logits_ptr, experts_ptr, out_ptr,
                    E: tl.constexpr, C: tl.constexpr, HW: tl.constexpr, BLOCK: tl.constexpr):
    """One program per (block of pixels, batch): argmax and its softmax probability over E in one
    online pass (FP32, ties keep the lowest index like torch.argmax), then p * expert[argmax]."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < HW
    m = tl.full((BLOCK,), float("-inf"), tl.float32)  # running max
    s = tl.zeros((BLOCK,), dtype=tl.float32)  # sum of exp(l - m)
    idx = tl.zeros((BLOCK,), dtype=tl.int32)
    for e in range(E):
        logit = tl.load(logits_ptr + (b * E + e) * HW + offs, mask=mask, other=0.0).to(tl.float32)
        new = logit > m
        s = tl.where(new, s * tl.exp(m - logit) + 1.0, s + tl.exp(logit - m))
        idx = tl.where(new, e, idx)
        m = tl.where(new, logit, m)
    gate = 1.0 / s
    for c in range(C):
        v = tl.load(experts_ptr + ((b * E + idx) * C + c) * HW + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + (b * C + c) * HW + offs, (gate * v).to(out_ptr.dtype.element_ty), mask=mask)
