"""Global summary tokens: light long-range mixing through a few learned tokens (linear in H*W).

1. gather: ``M`` learned queries cross-attend over all ``L = H*W`` positions of ``LN(x)``
   -> ``M`` summary tokens ``[B, M, C]``;
2. broadcast: every position cross-attends over the ``M`` summaries -> ``[B, L, C]`` -> proj.

Cost ``O(L * M * C)``: no global ``L x L`` attention. Plain MatMul / Softmax with static shapes,
so it exports with standard ONNX ops for any input size. Softmax runs in float32.
Contract: ``[B, C, H, W] -> [B, C, H, W]`` (residual added by the caller).
``fuse()`` folds the LayerNorm affine into ``to_qkv`` (its only consumer).
"""
from __future__ import annotations

import torch
from torch import nn

from hrx.blocks.norm import LayerNorm2d, fold_norm_into


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head cross-attention ``q [B, Lq, C]`` over ``k, v [B, Lk, C]`` -> ``[B, Lq, C]``."""
    b, lq, c = q.shape
    lk, d = k.shape[1], c // heads
    q = q.reshape(b, lq, heads, d).transpose(1, 2)  # [B, heads, Lq, d]
    k = k.reshape(b, lk, heads, d).transpose(1, 2)
    v = v.reshape(b, lk, heads, d).transpose(1, 2)
    attn = ((q * d**-0.5) @ k.transpose(-2, -1)).float().softmax(-1).to(v.dtype)  # [B, heads, Lq, Lk]
    return (attn @ v).transpose(1, 2).reshape(b, lq, c)


class GlobalSummaryTokens(nn.Module):
    def __init__(self, channels: int, tokens: int = 8, heads: int = 1) -> None:
        super().__init__()
        assert channels % heads == 0, "channels must be divisible by heads"
        self.heads = heads
        self.norm = LayerNorm2d(channels)
        self.to_qkv = nn.Linear(channels, 3 * channels)  # pixel queries, keys, values
        self.queries = nn.Parameter(torch.randn(tokens, channels) * 0.02)  # [M, C]
        self.summary_kv = nn.Linear(channels, 2 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels attend to a few learned summary tokens of the whole map: ``[B, C, H, W]`` -> the same shape."""
        b, c, h, w = x.shape
        t = self.norm(x).flatten(2).transpose(1, 2)  # [B, L, C]
        q_pix, k, v = self.to_qkv(t).chunk(3, dim=-1)  # [B, L, C] each
        summary = _attend(self.queries.to(t.dtype).expand(b, -1, -1), k, v, self.heads)  # [B, M, C]
        k_s, v_s = self.summary_kv(summary).chunk(2, dim=-1)  # [B, M, C] each
        out = self.proj(_attend(q_pix, k_s, v_s, self.heads))  # [B, L, C]
        return out.transpose(1, 2).reshape(b, c, h, w)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the norm into the qkv projection."""
        fold_norm_into(self.norm, self.to_qkv)
