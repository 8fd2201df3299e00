"""Shifted-window multi-head self-attention (Swin style) on NCHW maps.

Contract: ``[B, C, H, W] -> [B, C, H, W]`` with H and W multiples of ``window``. With ``shift``
the map is rolled by ``window // 2`` and attention is masked so that tokens only attend inside
their original region (Swin's shift mask). A learned relative-position bias is added per head.
The input LayerNorm is part of the block so that ``fuse()`` can fold its affine into ``qkv``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

import torch
from torch import nn

from hrx.blocks.norm import LayerNorm2d, fold_norm_into


def _shift_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """Additive mask ``[nW, N, N]`` (0 or -100) for the shifted windows of an h x w map.

    A fresh tensor per call from a cached plain array: caching a tensor would leak fake tensors
    from an export trace into eager runs."""
    return torch.tensor(_shift_mask_array(h, w, window, shift))


@lru_cache(maxsize=64)
def _shift_mask_array(h: int, w: int, window: int, shift: int) -> np.ndarray:
    # plain numpy: torch ops here would be traced (and cached) during export
    img = np.zeros((h, w), dtype=np.float32)
    cnt = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[hs, ws] = cnt
            cnt += 1
    win = img.reshape(h // window, window, w // window, window).transpose(0, 2, 1, 3).reshape(-1, window * window)
    mask = np.where(win[:, None, :] != win[:, :, None], np.float32(-100.0), np.float32(0.0))
    mask.setflags(write=False)
    return mask


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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
            mask = _shift_mask(h, w, win, self.shift).to(attn)  # [nW, N, N]
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

    @torch.no_grad()
    def fuse(self) -> None:
        fold_norm_into(self.norm, self.qkv)
