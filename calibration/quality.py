"""The quality gate: FP32 and INT8 on held-back tiles, PSNR against ground truth and against each other.

Protocol (as :mod:`hrx.evaluate`): ground truth = HR crops; model input = their antialiased bicubic
downscale (8-bit); outputs clamped and rounded to 8 bits; PSNR on Y (BT.601, [16, 235]) of the RGB
channels (RGB and RGBA models), on the single channel of gray models; ``scale`` pixels cropped at every border. The PSNR is
pooled over the tiles (mean squared error over all of them), so a flat tile cannot make it infinite.
``drop = PSNR(FP32) - PSNR(INT8)``, both against the ground truth.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from hrx.metrics import psnr_y



@dataclass(frozen=True)
class QualityReport:
    tiles: int
    psnr_fp32: float
    psnr_int8: float
    psnr_int8_vs_fp32: float

    @property
    def drop(self) -> float:
        """PSNR-Y lost by INT8 against FP32, in dB."""
        return self.psnr_fp32 - self.psnr_int8

    def passed(self, max_drop: float) -> bool:
        """Whether :attr:`drop` is at most ``max_drop``."""
        return self.drop <= max_drop

    def line(self) -> str:
        """One line: the PSNR-Y of both models, the drop and INT8 against FP32."""
        return (f"PSNR-Y on {self.tiles} held-back tiles: FP32 {self.psnr_fp32:.3f} dB, INT8 {self.psnr_int8:.3f} dB "
                f"(drop {self.drop:+.3f} dB); INT8 vs FP32 {self.psnr_int8_vs_fp32:.2f} dB")


GATE_ENGINES = ("onnxruntime", "openvino")


def run_model(path: str | os.PathLike, tiles: np.ndarray, batch: int, threads: int = 0,
              engine: str = "onnxruntime") -> tuple[np.ndarray, float]:
    """Run an ONNX file on the CPU over ``[N, C, t, t]`` tiles in its static batch, with ONNX Runtime or
    OpenVINO (``engine``; pinned to f32, so an INT8 file is scored on its INT8 error alone, the same on
    every CPU). Returns the outputs and the median milliseconds per batch (after one warm-up run)."""
    if engine == "openvino":
        from hrx.runtime.openvino import OpenVINOBackend

        backend = OpenVINOBackend(path, precision="fp32", threads=threads, cache=False)
        infer, close = backend.infer, backend.close
    else:
        from hrx.runtime.onnxrt import CPU, create_session

        session = create_session(path, [CPU], threads=threads)
        name = session.get_inputs()[0].name
        infer, close = (lambda x: session.run(None, {name: x})[0]), (lambda: None)
    batches = []
    for i in range(0, len(tiles), batch):
        x = tiles[i:i + batch]
        if len(x) < batch:
            x = np.concatenate([x, np.repeat(x[-1:], batch - len(x), axis=0)])
        batches.append(np.ascontiguousarray(x, dtype=np.float32))
    try:
        infer(batches[0])  # warm-up: allocations, kernel selection
        outs, times = [], []
        for x in batches:
            start = time.perf_counter()
            outs.append(infer(x))
            times.append(time.perf_counter() - start)
    finally:
        close()
    return np.concatenate(outs)[:len(tiles)], float(np.median(times)) * 1e3


def compare(fp32: np.ndarray, int8: np.ndarray, hr: np.ndarray, scale: int) -> QualityReport:
    """PSNR-Y of the FP32 and INT8 outputs against the originals ``hr``, and of INT8 against FP32."""
    return QualityReport(len(hr), psnr_y(fp32, hr, scale), psnr_y(int8, hr, scale), psnr_y(int8, fp32, scale))
