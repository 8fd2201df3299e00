"""Built-in presets as plain data: name -> model class, config class (``"module:Name"``),
description and config fields. This module imports nothing from HRX; :mod:`hrx.registry` reads
it and imports a model module only when that model is built. ``hrx-t`` / ``hydra-t`` are for tests
(< 150k parameters), ``hrx-s`` is the default deploy size.
"""
from __future__ import annotations

from typing import Any

_HRX = ("hrx.models.harmonic_rx:HarmonicRX", "hrx.models.harmonic_rx:HarmonicRXConfig")
_HYDRA = ("hrx.models.hydra:HydraFusionIR", "hrx.models.hydra:HydraConfig")

PRESETS: dict[str, dict[str, Any]] = {
    "hrx-t": dict(classes=_HRX, description="tiny, for tests and CI", config=dict(
        dim=16, depths=(1, 1, 1), heads=2, window=4, ssm_every=2, d_state=4, ssm_head_dim=8,
        chunk=16, ffn_expansion=1.5, replk_kernel=5, head_dim=8)),
    "hrx-s": dict(classes=_HRX, description="small, the default deploy size", config=dict(
        dim=32, depths=(2, 2, 2), heads=2, window=8, ssm_every=2, d_state=8, ssm_head_dim=16,
        chunk=32, ffn_expansion=2.0, replk_kernel=7, head_dim=16)),
    "hrx-m": dict(classes=_HRX, description="medium, quality first", config=dict(
        dim=64, depths=(4, 4, 4), heads=4, window=8, ssm_every=2, d_state=16, ssm_head_dim=16,
        chunk=32, ffn_expansion=2.0, replk_kernel=9, head_dim=32)),
    "hydra-t": dict(classes=_HYDRA, description="HydraFusionIR tiny, for tests and CI", config=dict(
        dim=8, enc_depths=(1, 1, 1), dec_depths=(1, 1, 1), heads=(1, 2, 2), window=4, kernel=5,
        ffn_expansion=1.0, summary_tokens=4, fsg_kernel=3, refiner_blocks=1, prompt_dim=4, head_dim=8)),
    "hydra-base": dict(classes=_HYDRA, description="HydraFusionIR baseline: 3 scales, MoE-X at stage 3 + bottleneck",
                       config=dict(
        dim=32, enc_depths=(2, 3, 4), dec_depths=(4, 3, 2), heads=(1, 2, 4), attention_stages=(2, 3),
        moe_stages=(3,), moe_bottleneck=True, window=8, kernel=7, ffn_expansion=2.0, summary_tokens=8,
        fsg_kernel=5, refiner_blocks=2, prompt_dim=0, head_dim=32)),
}
