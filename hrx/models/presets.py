"""Registered presets. ``hrx-t`` is for tests (< 150k parameters), ``hrx-s`` the default deploy size."""
from __future__ import annotations

from hrx.models.harmonic_rx import HarmonicRX, HarmonicRXConfig
from hrx.registry import register_model

register_model("hrx-t", HarmonicRX, HarmonicRXConfig, "tiny, for tests and CI",
               dim=16, depths=(1, 1, 1), heads=2, window=4, ssm_every=2, d_state=4, ssm_head_dim=8,
               chunk=16, ffn_expansion=1.5, replk_kernel=5, head_dim=8)
register_model("hrx-s", HarmonicRX, HarmonicRXConfig, "small, the default deploy size",
               dim=32, depths=(2, 2, 2), heads=2, window=8, ssm_every=2, d_state=8, ssm_head_dim=16,
               chunk=32, ffn_expansion=2.0, replk_kernel=7, head_dim=16)
register_model("hrx-m", HarmonicRX, HarmonicRXConfig, "medium, quality first",
               dim=64, depths=(4, 4, 4), heads=4, window=8, ssm_every=2, d_state=16, ssm_head_dim=16,
               chunk=32, ffn_expansion=2.0, replk_kernel=9, head_dim=32)

try:  # the sibling architecture registers itself when present
    from hrx.models import hydra  # noqa: F401
except ImportError:  # pragma: no cover - hydra is optional while it is being built
    pass
