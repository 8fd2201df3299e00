"""Selective scan (Mamba-2 / SSD style) and a 2-D SSM mixer over four scan orders.

The recurrence, per head ``h`` with a learned scalar decay ``A_h < 0`` and input-dependent step
``dt``, input matrix ``B`` and output matrix ``C``::

    state_t = exp(dt_t * A) * state_{t-1} + dt_t * x_t (outer) B_t      # state: [P, N]
    y_t     = state_t . C_t + D * x_t

Layout: channels first, the sequence axis last (the mixer's ``[4B, inner, L]`` sequences are a
free view): ``x [b, H, P, L]``, ``dt [b, H, L]`` (positive), ``A [H]`` (negative),
``B, C [b, N, L]``, ``D [H]`` -> ``y [b, H, P, L]``.

Two implementations that tests hold equal: :func:`selective_scan_ref` (sequential, readable) and
:func:`selective_scan_chunked` (chunked, all matmuls / cumsums / exps; exports to standard ONNX ops).
The scan is always computed in float32. The fused mixer scans each sequence both ways in place
(:func:`selective_scan_bidirectional`, the deploy graph: no flips).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hrx.blocks.impls import Implementations
from hrx.blocks.norm import LayerNorm2d, fold_norm_into

ScanFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def selective_scan_ref(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor, chunk: int = 0) -> torch.Tensor:
    """Sequential reference: one step of the recurrence per position (slow; for tests)."""
    b, H, P, L = x.shape
    N = B.shape[1]
    state = x.new_zeros(b, H, P, N, dtype=torch.float32)
    x, dt, B, C = x.float(), dt.float(), B.float(), C.float()
    ys = []
    for t in range(L):
        decay = torch.exp(dt[..., t] * A)  # [b, H]
        inject = dt[:, :, t, None, None] * x[..., t, None] * B[:, None, None, :, t]  # [b, H, P, N]
        state = state * decay[..., None, None] + inject
        ys.append(torch.einsum("bhpn,bn->bhp", state, C[..., t]) + D[None, :, None] * x[..., t])
    return torch.stack(ys, dim=-1)


def _segsum_exp(a: torch.Tensor) -> torch.Tensor:
    """``exp`` of the stable segment sums: ``a [..., T] -> [..., T, T]`` with
    ``out[i, j] = exp(sum(a[j+1 .. i]))`` for ``i >= j`` and 0 above the diagonal.

    Used between chunks, where a running sum over the whole sequence would be large and its
    differences inaccurate. The causal masks depend only on ``T`` (constants in an export with
    static shapes) and are applied by multiplication, so no ``Expand`` / ``Where`` over the full
    ``[..., T, T]`` tensor is needed: ``x * 1 == x``, ``x * 0 == 0`` and ``exp(0) * 0 == 0``.
    The cumsum runs over the second-last axis (contiguous rows: fast in ONNX Runtime)."""
    T = a.shape[-1]
    ones = torch.ones(T, T, dtype=a.dtype, device=a.device)
    lower_strict, lower = torch.tril(ones, -1), torch.tril(ones, 0)
    x = torch.cumsum(a.unsqueeze(-1) * lower_strict, dim=-2)  # x[..., i, j] = sum(a[j+1 .. i]) below, 0 above
    return torch.exp(x) * lower


def _chunk_decay(a_cum: torch.Tensor) -> torch.Tensor:
    """``a_cum [..., T]`` (running sums of ``a <= 0`` inside a chunk) -> ``[..., T, T]`` with
    ``out[j, i] = exp(a_cum[i] - a_cum[j])`` for ``j <= i``, 0 below the diagonal: the decay from
    position ``j`` to ``i``, laid out as the right-hand factor of ``x^T @ decay``.

    Inside one chunk the running sums stay small (``T`` terms), so their differences are accurate to
    float32 rounding of the sums. The mask is an additive constant (0 / -inf, so ``exp`` gives exactly
    0 and never overflows): one broadcast Sub, one Add and one Exp over ``[..., T, T]``."""
    T = a_cum.shape[-1]
    neg = torch.full((T, T), float("-inf"), dtype=a_cum.dtype, device=a_cum.device).tril(-1)
    return torch.exp(a_cum.unsqueeze(-2) - a_cum.unsqueeze(-1) + neg)


def selective_scan_chunked(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                           D: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Chunked parallel scan (SSD): quadratic inside chunks of ``chunk`` positions, a
    chunk-level recurrence (itself a small masked matmul) between chunks. O(L * chunk).

    Written P-major (``y^T = x^T @ M^T``) so that the channels-first layout needs one block
    transpose in (``[b, H, P, c, T] -> [b, H, c, P, T]``, contiguous runs of ``T``) and one out."""
    dtype = x.dtype
    b, H, P, L = x.shape
    N = B.shape[1]
    x, dt, B, C = x.float(), dt.float(), B.float(), C.float()
    pad = (-L) % chunk
    if pad:  # trailing zeros: dt = 0 leaves the state untouched and the scan is causal
        x, dt, B, C = F.pad(x, (0, pad)), F.pad(dt, (0, pad)), F.pad(B, (0, pad)), F.pad(C, (0, pad))
    c = (L + pad) // chunk
    xs = (x * dt.unsqueeze(2)).view(b, H, P, c, chunk).transpose(2, 3)  # [b, H, c, P, T]
    a = (dt * A.view(1, H, 1)).view(b, H, c, chunk)  # [b, H, c, T]
    Bt = B.view(b, N, c, chunk).permute(0, 2, 3, 1)  # [b, c, T, N]
    Cc = C.view(b, N, c, chunk).transpose(1, 2)  # [b, c, N, T]
    a_cum = torch.cumsum(a, dim=-1)  # [b, H, c, T]

    # 1) within chunks: y^T[p, i] = sum_j xs^T[p, j] (B_j . C_i) decay[j, i]
    decay = _chunk_decay(a_cum)  # [b, H, c, T, T]
    y_diag = xs @ ((Bt @ Cc).unsqueeze(1) * decay)  # [b, H, c, P, T]

    # 2) state at the end of every chunk, from that chunk's inputs alone
    to_end = torch.exp(a_cum[..., -1:] - a_cum)  # [b, H, c, T]: exp(sum a[j+1 .. T-1])
    states = (xs * to_end.unsqueeze(-2)) @ Bt.unsqueeze(1)  # [b, H, c, P, N]

    # 3) carry states across chunks: the state entering chunk k sums chunks j < k
    chunk_decay = F.pad(a_cum[..., -1], (1, 0))  # [b, H, c + 1]
    carry = _segsum_exp(chunk_decay)[..., :-1, 1:]  # [b, H, c, c]: [k, j] = exp(sum totals[j+1 .. k-1])
    prev = (carry @ states.reshape(b, H, c, P * N)).view(b, H, c, P, N)

    # 4) contribution of the carried state to each position
    y_off = (prev @ Cc.unsqueeze(1)) * torch.exp(a_cum).unsqueeze(-2)  # [b, H, c, P, T]

    y = (y_diag + y_off).transpose(2, 3).reshape(b, H, P, c * chunk)[..., :L]
    return (y + D.view(1, H, 1, 1) * x[..., :L]).to(dtype)


def selective_scan_bidirectional(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                                 C: torch.Tensor, D: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Each sequence scanned both ways, summed: ``x [n, H, P, L]``, ``dt [n, 2, H, L]``, ``B, C [n, 2, N, L]``
    (direction 0 forward, 1 reversed, each with its own ``dt, B, C``), ``A, D [H]`` -> ``[n, H, P, L]``,
    equal to ``scan(x, dt[:, 0], ..) + flip(scan(flip(x), flip(dt[:, 1]), ..))`` (:func:`selective_scan_chunked`)
    with no flip of any tensor: the reversed scan is the chunked form with the masks and the segment sums
    mirrored (upper-triangular decay inside a chunk, the carry matrix transposed between chunks).

    The data takes one block transpose in (``[n, H, P, c, T] -> [n, H, c, P, T]``, shared by both
    directions) and one out, after the directions are summed."""
    dtype = x.dtype
    n, H, P, L = x.shape
    N = B.shape[2]
    x, dt, B, C = x.float(), dt.float(), B.float(), C.float()
    pad = (-L) % chunk
    if pad:  # trailing zeros: dt = 0 injects nothing, in either direction
        x, dt, B, C = F.pad(x, (0, pad)), F.pad(dt, (0, pad)), F.pad(B, (0, pad)), F.pad(C, (0, pad))
    c = (L + pad) // chunk
    # per direction constants, shaped for [n, 2, H, c, T]: forward / reversed selectors and the sign of time
    fwd = torch.tensor([1.0, 0.0], device=x.device).view(1, 2, 1, 1, 1)
    rev, sign = 1.0 - fwd, 2.0 * fwd - 1.0
    xc = x.view(n, H, P, c, chunk).transpose(2, 3)  # [n, H, c, P, T]
    xs = xc.unsqueeze(1) * dt.view(n, 2, H, c, 1, chunk)  # [n, 2, H, c, P, T]
    a = dt.view(n, 2, H, c, chunk) * A.view(1, 1, H, 1, 1)  # [n, 2, H, c, T]
    a_cum = torch.cumsum(a, dim=-1)
    # time coordinate q: forward the inclusive sums, reversed the exclusive ones; the decay between
    # positions j and i is exp(sign * (q_i - q_j)) on the causal side of each direction, 0 on the other
    q = a_cum - a * rev
    last = a_cum[..., -1:]  # [n, 2, H, c, 1]: the chunk's total
    Bt = B.view(n, 2, N, c, chunk).permute(0, 1, 3, 4, 2)  # [n, 2, c, T, N]
    Cc = C.view(n, 2, N, c, chunk).transpose(2, 3)  # [n, 2, c, N, T]

    # 1) within chunks: y^T[p, i] = sum_j xs^T[p, j] (B_j . C_i) decay[j, i]
    T = chunk
    neg = torch.full((T, T), float("-inf"), dtype=x.dtype, device=x.device)
    mask = torch.stack([neg.tril(-1), neg.triu(1)]).view(1, 2, 1, 1, T, T)  # forward: j <= i; reversed: j >= i
    decay = torch.exp(sign.unsqueeze(-1) * (q.unsqueeze(-2) - q.unsqueeze(-1)) + mask)  # [n, 2, H, c, T, T]
    y_diag = xs @ ((Bt @ Cc).unsqueeze(2) * decay)  # [n, 2, H, c, P, T]

    # 2) each chunk's state at the edge it hands on (forward: its end, reversed: its start)
    to_edge = torch.exp(sign * (last * fwd - q))  # [n, 2, H, c, T]
    states = (xs * to_edge.unsqueeze(-2)) @ Bt.unsqueeze(2)  # [n, 2, H, c, P, N]

    # 3) carry states across chunks: forward from the chunks before, reversed from those after
    seg = _segsum_exp(F.pad(last.squeeze(-1), (1, 0)))[..., :-1, 1:]  # [n, 2, H, c, c]: [k, j] = exp(sum totals[j+1 .. k-1])
    carry = seg * fwd + seg.transpose(-1, -2) * rev
    prev = (carry @ states.reshape(n, 2, H, c, P * N)).view(n, 2, H, c, P, N)

    # 4) contribution of the carried state to each position
    y_off = (prev @ Cc.unsqueeze(2)) * torch.exp(sign * (q - last * rev)).unsqueeze(-2)  # [n, 2, H, c, P, T]

    y = (y_diag + y_off).sum(1).transpose(2, 3).reshape(n, H, P, c * chunk)[..., :L]  # [n, H, P, L]
    return (y + 2.0 * D.view(1, H, 1, 1) * x[..., :L]).to(dtype)


SCANS = Implementations("scan", "scan_impl", chunked=selective_scan_chunked, reference=selective_scan_ref)
register_scan_impl = SCANS.register  # the exporter's custom-op variant, a Triton kernel


def use_scan_impl(model: nn.Module, name: str) -> nn.Module:
    """Route the :class:`SSMixer` modules of ``model`` (only those: nothing else in the process)
    through the named scan implementation; returns ``model``. The exporter calls it on its own
    deploy copy, so the training model and other threads are never rerouted."""
    return SCANS.use(model, SSMixer, name)


def selective_scan(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor, chunk: int = 32, impl: str = "chunked") -> torch.Tensor:
    """Dispatch to the named implementation (default: chunked)."""
    return SCANS[impl](x, dt, A, B, C, D, chunk)


class SSMixer(nn.Module):
    """2-D selective-scan mixer (VMamba-style cross scan), including its input LayerNorm.

    ``[B, C, H, W] -> [B, C, H, W]`` (residual added by the caller). The map is scanned in four
    orders: row-major forward and reverse, column-major forward and reverse; each order has its
    own ``dt, B, C`` projections, the four outputs are summed, gated by ``silu(z)`` and projected.
    """

    def __init__(self, channels: int, d_state: int = 8, expand: float = 1.0, head_dim: int = 16,
                 chunk: int = 32) -> None:
        super().__init__()
        inner = int(channels * expand)
        head_dim = min(head_dim, inner)
        assert inner % head_dim == 0, "inner width must be divisible by head_dim"
        self.inner, self.heads, self.head_dim, self.d_state, self.chunk = inner, inner // head_dim, head_dim, d_state, chunk
        self.scan_impl = "chunked"  # a name in the implementation table; see use_scan_impl
        self.bidirectional = False  # set by fuse(): with the chunked scan, no flips (see _forward_bidirectional)
        self.norm = LayerNorm2d(channels)
        self.in_proj = nn.Conv2d(channels, inner * 2, 1)
        self.dw = nn.Conv2d(inner, inner, 3, padding=1, groups=inner)
        self.x_proj = nn.Conv2d(inner, 4 * (self.heads + 2 * d_state), 1)  # dt, B, C for 4 orders
        dt_init = torch.exp(torch.rand(4 * self.heads) * (math.log(0.1) - math.log(0.001)) + math.log(0.001))
        self.dt_bias = nn.Parameter(dt_init + torch.log(-torch.expm1(-dt_init)))  # softplus^-1
        self.A_log = nn.Parameter(torch.log(torch.linspace(1.0, 4.0, self.heads)))
        self.D = nn.Parameter(torch.ones(self.heads))
        self.out_proj = nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Selective scan over the four scan orders, gated and projected: ``[B, C, H, W]`` -> the same shape."""
        b, _, h, w = x.shape
        L, H, P, N = h * w, self.heads, self.head_dim, self.d_state
        u, z = self.in_proj(self.norm(x)).chunk(2, dim=1)  # [B, inner, h, w]
        u = F.silu(self.dw(u))
        if self.bidirectional and self.scan_impl == "chunked":
            return self.out_proj(self._scan_bidirectional(u).to(z.dtype) * F.silu(z))
        # sequences in 4 orders (rows, rows reversed, columns, columns reversed) as channel groups: [B, 4, inner, L]
        row, col = u.flatten(2), u.transpose(2, 3).flatten(2)
        seq_u = torch.stack([row, row.flip(-1), col, col.flip(-1)], 1)
        # x_proj (1x1: dt, B, C of each order) is pointwise, so it commutes with the orders' reorderings: one
        # grouped 1x1 conv over the four sequences (group k = order k) gives every order its projections in
        # its own order, with nothing of its output to transpose, flip or concatenate
        seq_p = F.conv2d(seq_u.view(b, 4 * self.inner, 1, L), self.x_proj.weight, self.x_proj.bias, groups=4)
        dt_raw, Bm, Cm = seq_p.view(b * 4, H + 2 * N, L).split([H, N, N], dim=1)
        bias = self.dt_bias.view(1, 4, H, 1).expand(b, 4, H, 1).reshape(b * 4, H, 1)
        dt = F.softplus(dt_raw.float() + bias)  # [4B, H, L]
        A = -torch.exp(self.A_log.float())
        # channels first throughout: [B, 4, inner, L] is [4B, H, P, L] and back, as views
        y = selective_scan(seq_u.view(b * 4, H, P, L), dt, A, Bm, Cm, self.D.float(), self.chunk, self.scan_impl)
        y = y.view(b, 4, self.inner, L)
        y_row = y[:, 0] + y[:, 1].flip(-1)
        y_col = (y[:, 2] + y[:, 3].flip(-1)).view(b, -1, w, h).transpose(2, 3)
        y = y_row.view(b, -1, h, w) + y_col  # [B, inner, h, w]
        return self.out_proj(y.to(z.dtype) * F.silu(z))

    def _scan_bidirectional(self, u: torch.Tensor) -> torch.Tensor:
        """The four scan orders of ``u [B, inner, h, w]`` summed, ``[B, inner, h, w]``, as :meth:`forward`
        computes them but with nothing flipped: rows and columns are two sequences, each scanned forward
        and reversed in place (:func:`selective_scan_bidirectional`). The deploy graph's form."""
        b, _, h, w = u.shape
        L, H, P, N = h * w, self.heads, self.head_dim, self.d_state
        seq_u = torch.stack([u.flatten(2), u.transpose(2, 3).flatten(2)], 1)  # [B, 2, inner, L]: rows, columns
        # the projections of orders 2s and 2s+1 read sequence s in its own order: a grouped 1x1 conv, two groups
        seq_p = F.conv2d(seq_u.view(b, 2 * self.inner, 1, L), self.x_proj.weight, self.x_proj.bias, groups=2)
        dt_raw, Bm, Cm = seq_p.view(b * 2, 2, H + 2 * N, L).split([H, N, N], dim=2)
        dt = F.softplus(dt_raw.float() + self.dt_bias.view(2, 2, H, 1).repeat(b, 1, 1, 1))  # [2B, 2, H, L]
        A = -torch.exp(self.A_log.float())
        y = selective_scan_bidirectional(seq_u.view(b * 2, H, P, L), dt, A, Bm, Cm, self.D.float(), self.chunk)
        y_row, y_col = y.view(b, 2, self.inner, L).unbind(1)
        return y_row.view(b, -1, h, w) + y_col.view(b, -1, w, h).transpose(2, 3)  # [B, inner, h, w]

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the norm into the input projection; deploy scans each order both ways in place (idempotent)."""
        fold_norm_into(self.norm, self.in_proj)
        self.bidirectional = True
