"""Torch-side custom ops for ``--ops plugin`` export: ``hrx::selective_scan`` and ``hrx::moe_top1``.

During a plugin export the deploy copy's scans and MoE combines are routed through these ops
(:func:`use_plugin_ops`, per module: no global switch, other models in the process are untouched); the
exporter translates each into ONE custom-domain ONNX node (``hrx::SelectiveScan``,
``hrx::MoETop1``) carrying the attributes TensorRT's ONNX parser uses to find a plugin
(``plugin_version``, ``plugin_namespace``). Their eager implementations are the project's own
PyTorch code, so tracing sees the exact shapes and values.
"""
from __future__ import annotations

import torch
from torch import nn

from hrx.blocks import moe as moe_mod
from hrx.blocks.ssm import register_scan_impl, selective_scan_chunked, use_scan_impl

_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return

    @torch.library.custom_op("hrx::selective_scan", mutates_args=())
    def selective_scan_op(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                          D: torch.Tensor, chunk: int) -> torch.Tensor:
        return selective_scan_chunked(x, dt, A, B, C, D, chunk)

    @selective_scan_op.register_fake
    def _(x, dt, A, B, C, D, chunk):
        return torch.empty_like(x)

    @torch.library.custom_op("hrx::moe_top1", mutates_args=())
    def moe_top1_op(logits: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
        return moe_mod.top1_combine_reference(logits, experts)

    @moe_top1_op.register_fake
    def _(logits, experts):
        return experts.new_empty(experts.shape[:1] + experts.shape[2:])

    def scan_via_op(x, dt, A, B, C, D, chunk):
        # the plugin contract wants L divisible by chunk: pad here (causal scan, dt = 0 pads)
        L = x.shape[-1]
        pad = (-L) % chunk
        if pad:
            import torch.nn.functional as F

            x, dt, B, C = F.pad(x, (0, pad)), F.pad(dt, (0, pad)), F.pad(B, (0, pad)), F.pad(C, (0, pad))
        y = torch.ops.hrx.selective_scan(x.float(), dt.float(), A.float(), B.float(), C.float(), D.float(), chunk)
        return y[..., :L]

    register_scan_impl("plugin", scan_via_op)
    moe_mod.register_combine_impl("plugin", lambda logits, experts: torch.ops.hrx.moe_top1(logits, experts))
    _registered = True


def use_plugin_ops(deploy: nn.Module) -> nn.Module:
    """Route the selective scans and top-1 MoE combines of ``deploy`` (the exporter's own fused
    copy) through the custom ops; returns it."""
    _register()
    return moe_mod.use_combine_impl(use_scan_impl(deploy, "plugin"), "plugin")
