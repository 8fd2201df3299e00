"""Shifted-window multi-head self-attention (Swin style) on NCHW maps.

Contract: ``[B, C, H, W] -> [B, C, H, W]`` with H and W multiples of ``window``. With ``shift``
the map is rolled by ``window // 2`` and attention is masked so that tokens only attend inside
their original region (Swin's shift mask). A learned relative-position bias is added per head.
The input LayerNorm is part of the block so that ``fuse()`` can fold its affine into ``qkv``.

After ``fuse()`` the block runs a token layout made for the deploy graph (same math): the map goes
channels-last once (``[B, C, HW] -> [B, HW, C]``, a plain 3-D transpose), is normalised there
(``LayerNormalization`` over the last axis), and the shift's roll and the window partition are one
``Gather`` of whole C-vectors with a constant index (:func:`window_order`); the reverse is the
inverse ``Gather`` and one 3-D transpose back. Each head's q, k, v come from their own rows of
``qkv`` as ``[B*nW, N, d]`` (no qkv permute, no head transpose); the query scale is folded into
``qkv`` and the relative-position bias and shift mask are added as one constant. In ONNX Runtime
(CPU, 2 threads, C=32 on a 64x64 map, shifted) the unfused layout (two 6-D transposes and a roll
per block, a 5-D qkv permute) took 1.7x the time of the token layout with the qkv permute, and that
one 1.0x-1.5x the time of the per-head projections (four interleaved runs, two map sizes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hrx.blocks.norm import LayerNorm2d, fold_norm_into


def _region_split(window: int, shift: int) -> torch.Tensor:
    """``[N, N]`` float (0 or 1), N = window**2: whether two pixels of a window lie on different sides
    of the row boundary ``window - shift`` (the boundary the roll creates in the last window row)."""
    side = (torch.arange(window) >= window - shift).float()  # per local row
    rows = side.repeat_interleave(window)  # row side of each of the N pixels (row-major)
    return (rows[:, None] != rows[None, :]).float()


def shift_mask(row_split: torch.Tensor, col_split: torch.Tensor, h: int, w: int, window: int) -> torch.Tensor:
    """Additive mask ``[nW, N, N]`` (0 or -100) for the shifted windows of an h x w map (Swin's).

    After the roll, only the last window row is split (by rows) and only the last window column (by
    columns); two pixels attend to each other iff they lie in the same region. ``row_split`` and
    ``col_split`` are the shape-free ``[N, N]`` parts, built once (buffers); what depends on ``h, w``
    is two small broadcasts, constants in a static-shape export or compile."""
    nh, nw = h // window, w // window
    last_row = (torch.arange(nh, device=row_split.device) == nh - 1).to(row_split.dtype)
    last_col = (torch.arange(nw, device=row_split.device) == nw - 1).to(row_split.dtype)
    split = torch.maximum(last_row.view(nh, 1, 1, 1) * row_split, last_col.view(1, nw, 1, 1) * col_split)
    return (split * -100.0).reshape(nh * nw, window * window, window * window)


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B*nW, window*window, C]``."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // window, window, w // window, window)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window * window, c)


def window_reverse(x: torch.Tensor, window: int, b: int, h: int, w: int) -> torch.Tensor:
    """``[B*nW, window*window, C] -> [B, C, H, W]``."""
    c = x.shape[-1]
    x = x.view(b, h // window, w // window, window, window, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


def window_order(h: int, w: int, window: int, shift: int, device: torch.device | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token indices for an h x w map in raster order: ``order`` gathers the (rolled by ``-shift``)
    tokens window by window, row-major inside each window (what :func:`window_partition` of the rolled
    map lists); ``back`` is its inverse (window order -> raster, rolled back by ``+shift``)."""
    raster = torch.arange(h * w, device=device).view(h, w)
    if shift:
        raster = torch.roll(raster, shifts=(-shift, -shift), dims=(0, 1))
    order = raster.view(h // window, window, w // window, window).permute(0, 2, 1, 3).reshape(-1)
    back = torch.arange(h * w, device=device).view(h // window, w // window, window, window)
    back = back.permute(0, 2, 1, 3).reshape(h, w)
    if shift:
        back = torch.roll(back, shifts=(shift, shift), dims=(0, 1))
    return order, back.reshape(-1)


class WindowAttention(nn.Module):
    def __init__(self, channels: int, heads: int, window: int, shift: bool = False) -> None:
        super().__init__()
        assert channels % heads == 0, "channels must be divisible by heads"
        self.channels, self.heads, self.window = channels, heads, window
        self.shift = window // 2 if shift else 0
        self.scale = (channels // heads) ** -0.5
        self.norm = LayerNorm2d(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        self.rel_bias = nn.Parameter(torch.zeros(heads, (2 * window - 1) ** 2))
        nn.init.trunc_normal_(self.rel_bias, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("rel_index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)
        # shape-free parts of the shift mask, built once here (no NumPy or caching inside forward,
        # so torch.compile and the exporter trace plain tensor ops)
        row_split = _region_split(window, self.shift) if self.shift else torch.zeros(0, 0)
        n = window * window
        col_split = row_split.view(window, window, window, window).permute(1, 0, 3, 2).reshape(n, n) if self.shift \
            else row_split
        self.register_buffer("row_split", row_split, persistent=False)
        self.register_buffer("col_split", col_split, persistent=False)
        self.tokens_layout = False  # set by fuse(): the deploy layout (module docstring), q scale in qkv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(Shifted) window self-attention with relative position bias: ``[B, C, H, W]`` -> the same shape."""
        if self.tokens_layout:
            return self._forward_tokens(x)
        b, c, h, w = x.shape
        win = self.window
        y = self.norm(x)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(2, 3))
        t = window_partition(y, win)  # [B*nW, N, C]
        n = t.shape[1]
        qkv = self.qkv(t).view(-1, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B*nW, heads, N, d]
        attn = (q * self.scale) @ k.transpose(-2, -1)  # [B*nW, heads, N, N]
        attn = attn + self.rel_bias[:, self.rel_index].unsqueeze(0)
        if self.shift:
            mask = shift_mask(self.row_split, self.col_split, h, w, win).to(attn)  # [nW, N, N]
            nw = mask.shape[0]
            attn = attn.view(b, nw, self.heads, n, n) + mask[None, :, None]
            attn = attn.view(-1, self.heads, n, n)
        attn = attn.float().softmax(-1).to(v.dtype)
        t = (attn @ v).transpose(1, 2).reshape(-1, n, c)
        t = self.proj(t)
        y = window_reverse(t, win, b, h, w)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(2, 3))
        return y

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``x + self(x)``. After ``fuse()`` the sum is taken channels-last, on the tokens the block
        already has, and goes back to NCHW once: the graph then holds ``[B,HW,C] -> [B,C,H,W]`` for the
        sum, which the next channels-last LayerNorm reads back as a reshape
        (``hrx.export.passes.cancel_transposes``), instead of a transpose of the attention output and
        another of the sum."""
        if not self.tokens_layout:
            return x + self(x)
        b, c, h, w = x.shape
        t = x.reshape(b, c, h * w).transpose(1, 2)  # [B, HW, C]
        return (t + self._attend(t, b, h, w)).transpose(1, 2).reshape(b, c, h, w)

    def _forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The fused block's forward: channels-last tokens, one Gather in and one out (see the module)."""
        b, c, h, w = x.shape
        return self._attend(x.reshape(b, c, h * w).transpose(1, 2), b, h, w).transpose(1, 2).reshape(b, c, h, w)

    def _attend(self, t: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        """Attention on raster-order channels-last tokens ``[B, HW, C] -> [B, HW, C]`` (fused weights)."""
        c = t.shape[-1]
        win, heads, n = self.window, self.heads, self.window * self.window
        order, back = window_order(h, w, win, self.shift, t.device)
        t = F.layer_norm(t.float(), (c,), eps=self.norm.eps).to(t.dtype)
        t = t.index_select(1, order).reshape(-1, n, c)  # [B*nW, N, C]
        bias = self.rel_bias[:, self.rel_index]  # [heads, N, N]
        if self.shift:
            mask = shift_mask(self.row_split, self.col_split, h, w, win)  # [nW, N, N]
            bias = bias[None] + mask[:, None]  # [nW, heads, N, N]: one constant in a static-shape graph
        else:
            bias = bias[None]
        # one head at a time, each q / k / v its own slice of qkv: [B*nW, N, d] straight out of the
        # projection, so no [.., 3, heads, d] -> [3, .., heads, N, d] permute and no head transpose
        d = c // heads
        weight, qkv_bias = self.qkv.weight, self.qkv.bias

        def project(part: int) -> torch.Tensor:
            rows = slice(part * d, (part + 1) * d)
            return F.linear(t, weight[rows], qkv_bias[rows])

        outs = []
        for i in range(heads):
            q, k, v = project(i), project(heads + i), project(2 * heads + i)  # q already scaled
            attn = (q @ k.transpose(-2, -1)).view(b, -1, n, n) + bias[:, i].to(q)  # [B, nW, N, N]
            attn = attn.view(-1, n, n).float().softmax(-1).to(v.dtype)
            outs.append(attn @ v)  # [B*nW, N, d]
        t = torch.cat(outs, -1) if heads > 1 else outs[0]
        return self.proj(t).reshape(b, h * w, c).index_select(1, back)  # raster order, rolled back

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the norm and the query scale into qkv and switch to the deploy token layout (once)."""
        fold_norm_into(self.norm, self.qkv)
        if not self.tokens_layout:  # the query scale into the q rows of qkv (once)
            c = self.channels
            self.qkv.weight[:c] *= self.scale
            self.qkv.bias[:c] *= self.scale
            self.tokens_layout = True
