"""Cut an image into static square tiles, run them in batches, and put the upscaled tiles back together.

Geometry, per axis (image length ``L``, tile ``T``, overlap ``O``, model ``size_multiple`` ``m``)::

    padded length  Lp = max(T, ceil(L / m) * m)     extended at the end (bottom / right) by reflection
    tile starts    0, S, 2S, ...  and a last tile flush with Lp,   S = largest multiple of m <= T - O

Tile starts stay multiples of ``m``, so the windows and strided layers inside a tile line up with the
ones of whole-image inference. The image is *not* padded on its outer sides: a tile on the image border
sees the model's own zero padding there, exactly like whole-image inference does, so for a model whose
receptive field is bounded by the overlap the tiled result equals whole-image inference (tested).

Two ways to merge overlapping tiles (``TileSpec.merge``):

* ``"crop"``: every output pixel comes from exactly one tile; neighbours meet in the middle of their
  overlap, so each kept pixel has at least ``O / 2`` input pixels of context inside its tile.
* ``"blend"``: a separable raised-cosine cross-fade over the middle half of each overlap (weights sum to
  one); each weighted pixel has at least ``O / 4`` pixels of context. Hides seams of models whose
  receptive field is the whole tile (selective scan), at the price of less context per pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Generator, Iterable, Iterator

import numpy as np

from hrx.errors import HRXError, check_choice

if TYPE_CHECKING:
    from hrx.interface import ModelInfo

MERGE_MODES = ("crop", "blend")
InferFn = Callable[[np.ndarray], np.ndarray]  # float32 [batch, C, T, T] -> [batch, Co, T*s, T*s]


@dataclass(frozen=True)
class TileSpec:
    tile: int  # static input side of the model
    overlap: int  # wanted overlap between neighbouring tiles, input pixels
    scale: int
    size_multiple: int = 1
    batch: int = 1
    merge: str = "crop"

    def __post_init__(self) -> None:
        m = max(1, self.size_multiple)
        if self.tile <= 0 or self.tile % m:
            raise HRXError(f"tile {self.tile} must be a positive multiple of the model's size_multiple {m}")
        if self.overlap < 0 or self.stride < m:
            raise HRXError(f"overlap {self.overlap} is too large for tile {self.tile} "
                           f"(tiles advance in steps of {m} pixels; use an overlap <= {self.tile - m})")
        check_choice("merge", self.merge, MERGE_MODES)
        if self.batch < 1 or self.scale < 1:
            raise HRXError(f"batch ({self.batch}) and scale ({self.scale}) must be >= 1")

    @classmethod
    def from_info(cls, info: ModelInfo, overlap: int | None = None, merge: str = "crop") -> "TileSpec":
        """The spec a model's metadata (:class:`hrx.interface.ModelInfo`) gives: its tile, scale, size
        multiple and batch, and its recommended overlap unless ``overlap`` is given."""
        return cls(info.tile, info.tile_overlap if overlap is None else overlap, info.scale, info.size_multiple,
                   info.batch, merge)

    @property
    def stride(self) -> int:
        """Distance between tile starts: the largest multiple of size_multiple <= tile - overlap."""
        m = max(1, self.size_multiple)
        return (self.tile - self.overlap) // m * m


@dataclass(frozen=True)
class AxisPlan:
    """Where the tiles go along one axis, and which output pixels each one contributes."""

    length: int  # image length (input pixels)
    padded: int  # length after reflection padding at the end
    starts: tuple[int, ...]  # tile starts, input pixels

    @property
    def count(self) -> int:
        """Number of tiles along the axis."""
        return len(self.starts)


class NonFiniteOutput(HRXError):
    """The model returned NaN or Inf: the image (or video) fails and nothing is written for it."""

    def __init__(self, nan: int, inf: int, where: str) -> None:
        self.nan, self.inf, self.where = nan, inf, where
        super().__init__(f"the model output {nan} NaN and {inf} Inf values ({where}); nothing written")

    def at(self, where: str) -> NonFiniteOutput:
        """The same error, placed further (``"frame 12 (pts 3003)"``)."""
        return NonFiniteOutput(self.nan, self.inf, f"{self.where}, {where}")


def check_finite(result: np.ndarray, where: Callable[[int], str]) -> None:
    """Raise :class:`NonFiniteOutput` when ``result`` ``[N, ...]`` holds NaN or Inf; ``where(k)`` names
    item ``k``, the first bad one. One sum over the batch; counted exactly only when that is not finite."""
    if np.isfinite(np.sum(result, dtype=np.float32)):
        return
    bad = ~np.isfinite(result)
    if not bad.any():  # finite values whose sum overflowed
        return
    nan = int(np.count_nonzero(np.isnan(result)))
    first = int(np.argmax(bad.reshape(len(result), -1).any(axis=1)))
    raise NonFiniteOutput(nan, int(np.count_nonzero(bad)) - nan, where(first))


def plan_axis(length: int, spec: TileSpec) -> AxisPlan:
    """Tile starts along one axis of ``length`` pixels (padded to a multiple of ``size_multiple``)."""
    m = max(1, spec.size_multiple)
    padded = max(spec.tile, math.ceil(length / m) * m)
    last = padded - spec.tile
    starts = list(range(0, last, spec.stride)) + [last]
    return AxisPlan(length, padded, tuple(starts))


def tile_count(height: int, width: int, spec: TileSpec) -> int:
    """Number of tiles an image of ``height`` x ``width`` takes."""
    return plan_axis(height, spec).count * plan_axis(width, spec).count


def _raised_cosine(n: int) -> np.ndarray:
    """``n`` weights falling smoothly from ~1 to ~0; ``w + w[::-1] == 1``."""
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    return np.cos(t * np.pi / 2) ** 2


def axis_windows(plan: AxisPlan, spec: TileSpec) -> list[tuple[int, int, np.ndarray | None]]:
    """Per tile, in output pixels: ``(lo, hi, weights)`` = the output range ``[lo, hi)`` the tile writes
    (tile-relative offset ``lo - start * scale``) and its weights there (``None``: all ones, crop)."""
    s, out_len = spec.scale, plan.length * spec.scale
    tile_out = spec.tile * s
    windows: list[tuple[int, int, np.ndarray | None]] = []
    for i, start in enumerate(plan.starts):
        o0, o1 = start * s, start * s + tile_out
        prev_end = plan.starts[i - 1] * s + tile_out if i > 0 else None  # overlap with the left neighbour
        next_start = plan.starts[i + 1] * s if i + 1 < plan.count else None  # ... with the right one
        if spec.merge == "crop":
            lo = (o0 + prev_end) // 2 if prev_end is not None else o0
            hi = (next_start + o1) // 2 if next_start is not None else o1
            lo, hi = min(lo, out_len), min(hi, out_len)
            windows.append((lo, hi, None))
            continue
        w = np.ones(tile_out, dtype=np.float64)
        lo, hi = o0, o1
        if prev_end is not None:  # fade in over the middle half of [o0, prev_end)
            width = prev_end - o0
            q = width // 4
            ramp = width - 2 * q
            w[:q] = 0.0
            w[q:q + ramp] = _raised_cosine(ramp)[::-1]
            lo = o0 + q
        if next_start is not None:  # fade out over the middle half of [next_start, o1)
            width = o1 - next_start
            q = width // 4
            ramp = width - 2 * q
            a = next_start - o0 + q
            w[a:a + ramp] *= _raised_cosine(ramp)
            w[a + ramp:] = 0.0
            hi = o1 - q
        hi = min(hi, out_len)
        lo = min(lo, hi)
        windows.append((lo, hi, w[lo - o0:hi - o0]))
    return windows


def _weight_sums(windows: list[tuple[int, int, np.ndarray | None]], out_len: int) -> np.ndarray:
    total = np.zeros(out_len, dtype=np.float64)
    for lo, hi, w in windows:
        total[lo:hi] += 1.0 if w is None else w
    return total


def pad_to_plan(image: np.ndarray, rows: AxisPlan, cols: AxisPlan) -> np.ndarray:
    """``[C, H, W] -> [C, Hp, Wp]``, reflecting at the bottom and right (a 1-pixel side is repeated)."""
    pad = ((0, 0), (0, rows.padded - rows.length), (0, cols.padded - cols.length))
    if not any(p[1] for p in pad):
        return image
    return np.pad(image, pad, mode="reflect")


def _batches(positions: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    for i in range(0, len(positions), size):
        yield positions[i:i + size]


def upscale_tiled(image: np.ndarray, infer: InferFn, spec: TileSpec,
                  on_tiles: Callable[[int], None] | None = None,
                  infer_many: Callable[[Iterable[np.ndarray]], Iterator[np.ndarray]] | None = None) -> np.ndarray:
    """Upscale ``image`` float32 ``[C, H, W]`` with ``infer`` over static tiles -> float32 ``[Co, H*s, W*s]``.

    ``infer`` always receives exactly ``spec.batch`` tiles (the last batch is padded with copies of its
    last tile); ``on_tiles(n)`` is called after each batch with the number of real tiles done.
    ``infer_many`` (optional, e.g. TensorRT's): results of a stream of batches in order, with several
    batches in flight; used instead of ``infer`` when given.
    """
    if image.ndim != 3:
        raise ValueError(f"image must be [C, H, W], got shape {image.shape}")
    _, h, w = image.shape
    rows, cols = plan_axis(h, spec), plan_axis(w, spec)
    padded = np.ascontiguousarray(pad_to_plan(image.astype(np.float32, copy=False), rows, cols))
    row_win, col_win = axis_windows(rows, spec), axis_windows(cols, spec)
    t, s = spec.tile, spec.scale
    positions = [(i, j) for i in range(rows.count) for j in range(cols.count)]
    groups = list(_batches(positions, spec.batch))

    def batches() -> Iterator[np.ndarray]:
        for group in groups:
            tiles = np.stack([padded[:, rows.starts[i]:rows.starts[i] + t, cols.starts[j]:cols.starts[j] + t]
                              for i, j in group])  # [n, C, T, T]
            if len(group) < spec.batch:
                tiles = np.concatenate([tiles, np.repeat(tiles[-1:], spec.batch - len(group), axis=0)])
            yield tiles

    results = infer_many(batches()) if infer_many is not None else map(infer, batches())
    out: np.ndarray | None = None
    done = 0  # batches received
    try:
        for result in results:
            if done == len(groups):
                raise HRXError(f"backend returned more results than the {len(groups)} batches of tiles it was given")
            group, done = groups[done], done + 1
            result = np.asarray(result)  # [batch, Co, T*s, T*s]
            if result.shape[0] != spec.batch or result.shape[2:] != (t * s, t * s):
                raise HRXError(f"backend returned shape {tuple(result.shape)} for {spec.batch} tiles of {t}x{t} "
                               f"at scale {s}; expected [{spec.batch}, C, {t * s}, {t * s}]")
            check_finite(result[:len(group)], lambda k: _tile_place(group[k], positions, rows, cols))
            if out is None:
                out = np.zeros((result.shape[1], h * s, w * s), dtype=np.float32)
            for k, (i, j) in enumerate(group):
                (y0, y1, wy), (x0, x1, wx) = row_win[i], col_win[j]
                if y1 <= y0 or x1 <= x0:
                    continue
                oy, ox = rows.starts[i] * s, cols.starts[j] * s
                part = result[k, :, y0 - oy:y1 - oy, x0 - ox:x1 - ox]
                if wy is None and wx is None:
                    out[:, y0:y1, x0:x1] = part
                else:
                    weight = np.outer(wy, wx).astype(np.float32)
                    out[:, y0:y1, x0:x1] += part * weight
            if on_tiles is not None:
                on_tiles(len(group))
    finally:  # a stream stopped early (bad result, Ctrl-C) frees the batches still in flight now
        if isinstance(results, Generator):
            results.close()
    if done != len(groups):  # never an image with tiles left at zero
        raise HRXError(f"backend returned {done} results for {len(groups)} batches of tiles")
    assert out is not None  # at least one tile always exists
    if spec.merge == "blend":  # the windows sum to one except where three tiles overlap; normalise anyway
        out /= _weight_sums(row_win, h * s).astype(np.float32)[None, :, None]  # separable: no [Hs, Ws] array
        out /= _weight_sums(col_win, w * s).astype(np.float32)[None, None, :]
    return out


def _tile_place(ij: tuple[int, int], positions: list[tuple[int, int]], rows: AxisPlan, cols: AxisPlan) -> str:
    i, j = ij
    return f"tile {positions.index(ij) + 1} of {len(positions)}, at x={cols.starts[j]} y={rows.starts[i]}"


def upscale_whole(image: np.ndarray, infer: InferFn, spec: TileSpec) -> np.ndarray:
    """Whole-image inference for backends that take any input size (PyTorch): ``[C, H, W]`` extended at the
    bottom / right by reflection to multiples of ``size_multiple``, one call, cropped back."""
    _, h, w = image.shape
    m = max(1, spec.size_multiple)
    rows = AxisPlan(h, math.ceil(h / m) * m, (0,))
    cols = AxisPlan(w, math.ceil(w / m) * m, (0,))
    padded = pad_to_plan(image.astype(np.float32, copy=False), rows, cols)
    out = np.asarray(infer(np.ascontiguousarray(padded[None])))
    check_finite(out, lambda k: "the whole image in one call")
    return out[0, :, :h * spec.scale, :w * spec.scale]
