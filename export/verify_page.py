"""``hrx verify --html``: the comparison as a page, one section per input tile and backend.

Each section shows the PyTorch reference, the backend's output, the error map (``|difference|``, the largest
over the channels, amplified so that the colour bar spans a round number of 8-bit levels; NaN in magenta)
with its legend, PSNR / max abs / NaN count, a histogram of the errors, and the worst region (the window with
the largest summed error) zoomed side by side. The verdict at the top is the one the terminal prints.
The numbers here are computed in this module; :mod:`hrx.pages` renders them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hrx.export.compare import VerifyReport, VerifySample
from hrx.metrics import psnr_from_mse
from hrx.pages import Markup, image_uri, join, page, render, to_rgb8

LEVELS = 255.0  # one 8-bit level is 1/255 of the [0, 1] range
# the colour bar of the error maps, dark (no error) to bright (full scale): anchors of matplotlib's inferno
COLOURS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)
NAN_COLOUR = (255, 0, 255)
HIST_BINS = 32
SHOW = 192  # CSS pixels of each picture on the page (tiles are small: shown enlarged, pixelated)


@dataclass(frozen=True)
class ErrorStats:
    """One backend's output on one tile against the reference, in 8-bit levels where it says so."""
    max_abs: float  # in [0, 1] units, NaN ignored
    psnr: float  # dB, NaN pixels left out
    nans: int  # NaN values in the output
    passed: bool


def error_stats(reference: np.ndarray, output: np.ndarray, limit: float) -> ErrorStats:
    """Max abs error, PSNR and NaN count of ``output`` ``[C, H, W]`` against ``reference``; ``passed`` when the
    error stays within ``limit`` and nothing is NaN."""
    diff = np.abs(output.astype(np.float64) - reference.astype(np.float64))
    nans = int(np.isnan(output).sum())
    finite = diff[np.isfinite(diff)]
    max_abs = float(finite.max()) if finite.size else float("inf")
    psnr = psnr_from_mse(float((finite ** 2).mean())) if finite.size else 0.0
    return ErrorStats(max_abs, psnr, nans, nans == 0 and max_abs <= limit)


def full_scale(max_levels: float) -> float:
    """The error map's full scale in 8-bit levels: ``max_levels`` rounded up to 1, 2 or 5 times a power of ten."""
    if not math.isfinite(max_levels) or max_levels <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(max_levels))
    return next(k * power for k in (1, 2, 5, 10) if k * power >= max_levels * (1 - 1e-9))


def error_map(reference: np.ndarray, output: np.ndarray, scale_levels: float) -> np.ndarray:
    """uint8 ``[H, W, 3]``: per pixel the largest channel error, 0 .. ``scale_levels`` 8-bit levels along
    :data:`COLOURS` (above: the brightest colour); NaN in :data:`NAN_COLOUR`."""
    diff = np.abs(output.astype(np.float32) - reference.astype(np.float32)) * LEVELS  # [C, H, W]
    nan = np.isnan(diff).any(axis=0)
    err = np.nan_to_num(diff, nan=0.0).max(axis=0) / scale_levels  # [H, W] in [0, 1+]
    stops = np.linspace(0.0, 1.0, len(COLOURS))
    rgb = np.stack([np.interp(np.clip(err, 0, 1), stops, COLOURS[:, c]) for c in range(3)], axis=-1)
    rgb = (rgb + 0.5).astype(np.uint8)
    rgb[nan] = NAN_COLOUR
    return rgb


def worst_window(reference: np.ndarray, output: np.ndarray, side: int) -> tuple[int, int, int]:
    """``(y, x, side)`` of the ``side`` x ``side`` window with the largest summed error (NaN counts as large)."""
    diff = np.abs(output.astype(np.float64) - reference.astype(np.float64))
    err = np.nan_to_num(diff, nan=1e6).max(axis=0)  # [H, W]
    h, w = err.shape
    side = max(1, min(side, h, w))
    table = np.pad(err.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = table[side:, side:] - table[:-side, side:] - table[side:, :-side] + table[:-side, :-side]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(y), int(x), side


def outline(image: np.ndarray, y: int, x: int, side: int, colour=(0, 255, 255)) -> np.ndarray:
    """A copy of uint8 ``[H, W, 3]`` with a one-pixel box around the window."""
    out = image.copy()
    y1, x1 = min(y + side - 1, out.shape[0] - 1), min(x + side - 1, out.shape[1] - 1)
    out[y, x:x1 + 1] = out[y1, x:x1 + 1] = colour
    out[y:y1 + 1, x] = out[y:y1 + 1, x1] = colour
    return out


def histogram_svg(reference: np.ndarray, output: np.ndarray, scale_levels: float, width: int = 240,
                  height: int = 120) -> Markup:
    """An SVG bar chart of the errors (every value, 8-bit levels) in :data:`HIST_BINS` bins over 0 .. the map's
    full scale; bar heights on a log scale of the count; each bar's tooltip gives its range and count."""
    diff = np.abs(output.astype(np.float64) - reference.astype(np.float64)) * LEVELS
    diff = diff[np.isfinite(diff)]
    counts, edges = np.histogram(np.clip(diff, 0, scale_levels), bins=HIST_BINS, range=(0.0, scale_levels))
    top = math.log10(1 + max(int(counts.max()), 1))
    plot_h, bar_w = height - 16, width / HIST_BINS
    bars = []
    for k, count in enumerate(counts):
        h = plot_h * math.log10(1 + int(count)) / top
        bars.append(f'<rect x="{k * bar_w:.2f}" y="{plot_h - h:.2f}" width="{bar_w - 1:.2f}" height="{h:.2f}">'
                    f'<title>{edges[k]:.3g}-{edges[k + 1]:.3g} levels: {int(count)}</title></rect>')
    return render("verify_hist.svg", width=width, height=height, bars=Markup("".join(bars)), base=height - 3,
                  full=f"{scale_levels:g}", half=f"{scale_levels / 2:g}", mid=width / 2)


def _show(image: np.ndarray, alt: str, size: int = SHOW) -> Markup:
    return render("verify_img.html", src=image_uri(image), alt=alt, size=size)


def _hwc(chw: np.ndarray) -> np.ndarray:
    return np.asarray(chw).transpose(1, 2, 0)


def _zoom(image: np.ndarray, y: int, x: int, side: int) -> np.ndarray:
    crop = to_rgb8(image)[y:y + side, x:x + side]
    k = max(1, SHOW // side)
    return np.repeat(np.repeat(crop, k, axis=0), k, axis=1)


def case_section(report: VerifyReport, sample: VerifySample, backend: str) -> Markup:
    """One backend's output on one tile: pictures, numbers, histogram, worst region."""
    ref, out = sample.reference, sample.outputs[backend]
    stats = error_stats(ref, out, report.limit(ref))
    scale = full_scale(stats.max_abs * LEVELS)
    errs = error_map(ref, out, scale)
    y, x, side = worst_window(ref, out, max(8, min(ref.shape[1:]) // 4))
    ref_img, out_img = to_rgb8(_hwc(ref)), to_rgb8(_hwc(out))
    verdict = "pass" if stats.passed else "fail"
    return render(
        "verify_case.html", verdict=verdict, verdict_text=verdict.upper(), backend=backend,
        psnr=f"{stats.psnr:.2f}", max_abs=f"{stats.max_abs:.3e}", max_levels=f"{stats.max_abs * LEVELS:.3g}",
        nans=stats.nans, limit=f"{report.limit(ref):.3e}",
        reference=_show(ref_img, "PyTorch reference"), output=_show(out_img, f"{backend} output"),
        errors=_show(outline(errs, y, x, side), f"error map of {backend}"), scale=f"{scale:g}",
        half=f"{scale / 2:g}", gradient=", ".join(f"rgb({r:.0f},{g:.0f},{b:.0f})" for r, g, b in COLOURS),
        histogram=histogram_svg(ref, out, scale), region=f"{side}x{side} px at ({x}, {y})",
        zoom_reference=_show(_zoom(ref_img, y, x, side), "reference, worst region"),
        zoom_output=_show(_zoom(out_img, y, x, side), f"{backend}, worst region"),
        zoom_errors=_show(_zoom(errs, y, x, side), "errors, worst region"))


def summary_rows(report: VerifyReport) -> Markup:
    rows = []
    for r in report.reports:
        verdict = "pass" if r.passed else "fail"
        rows.append(render("verify_row.html", backend=r.backend, verdict=verdict, verdict_text=verdict.upper(),
                           max_abs=f"{r.max_abs:.3e}", max_rel=f"{r.max_rel:.3e}", psnr=f"{r.psnr:.2f}"))
    return join(rows)


def verify_page(report: VerifyReport, checkpoint: str) -> bytes:
    """The whole page for ``report`` (made with ``keep_outputs=True``)."""
    verdict = "pass" if report.passed else "fail"
    samples = []
    for sample in report.samples:
        cases = join([case_section(report, sample, b) for b in sample.outputs])
        samples.append(render("verify_sample.html", label=sample.label,
                              input=_show(to_rgb8(_hwc(sample.input)), f"input {sample.label}", SHOW // 2),
                              size=f"{sample.input.shape[2]}x{sample.input.shape[1]}",
                              out_size=f"{sample.reference.shape[2]}x{sample.reference.shape[1]}", cases=cases))
    bisect = render("verify_bisect.html", text=report.bisect) if report.bisect else Markup("")
    body = render("verify.html", verdict=verdict, verdict_text=verdict.upper(), model=str(report.model),
                  checkpoint=str(checkpoint), precision=report.precision, atol=f"{report.atol:g}",
                  rtol=f"{report.rtol:g}", inputs=report.inputs, tiles=len(report.samples), rows=summary_rows(report),
                  bisect=bisect, samples=join(samples))
    return page(f"hrx verify {Path(report.model).name}: {verdict.upper()}", body)

