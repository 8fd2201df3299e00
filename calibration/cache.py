"""The ranges cache written next to the output, so re-quantizing (another ``--target``, a fallback, a
new ``--max-drop``) needs no images.

``OUT.int8.onnx`` -> ``OUT.int8.ranges.json``: a header (FP32 model sha256, method, samples, seed,
tile, the images' fingerprint and split) and, under ``"ort"``, ONNX Runtime's own calibration-cache
payload (``TensorsData.to_dict()``, readable with ``onnxruntime.quantization.calibrate.TensorsData.from_dict``).
``OUT.int8.heldout.npz``: the held-back tiles of the quality gate (8-bit, ``lr`` and ``hr``), so the gate
runs without the images too.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hrx.errors import HRXError
from hrx.paths import atomic_write, file_sha256

FORMAT = "hrx-int8-ranges"
VERSION = 1


@dataclass(frozen=True)
class CacheKey:
    """What the ranges depend on: a cache is reused only when all of it matches."""

    model_sha256: str
    method: str
    samples: int
    seed: int
    tile: int
    eval_tiles: int
    images_sha256: str


@dataclass
class RangesCache:
    key: CacheKey
    ranges: object  # onnxruntime.quantization.calibrate.TensorsData
    eval_lr: np.ndarray  # float32 [n, C, t, t]
    eval_hr: np.ndarray  # float32 [n, C, t*s, t*s]
    images: str = ""  # the folder the ranges came from (for the summary)
    calib_images: list[str] = field(default_factory=list)
    held_back_images: list[str] = field(default_factory=list)
    padded: list[str] = field(default_factory=list)


def cache_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """``(ranges.json, heldout.npz)`` next to ``output`` (``m.int8.onnx`` -> ``m.int8.ranges.json``)."""
    output = Path(output)
    stem = output.name[:-5] if output.name.endswith(".onnx") else output.name
    return output.with_name(stem + ".ranges.json"), output.with_name(stem + ".heldout.npz")


def heldout_for(json_path: Path) -> tuple[Path, Path]:
    """``(ranges.json, heldout.npz)`` for a ranges file given with ``--ranges``."""
    name = json_path.name
    stem = name[:-len(".ranges.json")] if name.endswith(".ranges.json") else json_path.stem
    return json_path, json_path.with_name(stem + ".heldout.npz")


def images_sha256(files: list[Path], root: Path) -> str:
    """One digest over the images' relative names and contents."""
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + file_sha256(p).encode())
    return h.hexdigest()


def _to8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


def save(cache: RangesCache, json_path: Path, npz_path: Path) -> None:
    """Write ``cache`` as its JSON description and ``.npz`` ranges."""
    from onnxruntime.quantization.calibrate import CalibrationCacheEncoder

    doc = {"format": FORMAT, "version": VERSION, **asdict(cache.key), "images": cache.images,
           "calib_images": cache.calib_images, "held_back_images": cache.held_back_images, "padded": cache.padded,
           "ort": cache.ranges.to_dict()}
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(doc, cls=CalibrationCacheEncoder, indent=1)))

    def write_npz(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, lr=_to8(cache.eval_lr), hr=_to8(cache.eval_hr))

    atomic_write(npz_path, write_npz)


def load(json_path: Path, npz_path: Path) -> RangesCache:
    """Read a cache; raises :class:`HRXError` naming the file when it is missing or not one of ours."""
    from onnxruntime.quantization.calibrate import TensorsData

    if not json_path.is_file():
        raise HRXError(f"{json_path}: no ranges cache; pass --images DIR to calibrate")
    try:
        doc = json.loads(json_path.read_text())
        if doc.get("format") != FORMAT:
            raise ValueError("format")
        key = CacheKey(**{k: doc[k] for k in CacheKey.__dataclass_fields__})
        ranges = TensorsData.from_dict(doc["ort"])
    except (ValueError, KeyError, TypeError) as e:
        raise HRXError(f"{json_path}: not an hrx ranges cache ({type(e).__name__}); delete it and pass --images DIR") from None
    if not npz_path.is_file():
        raise HRXError(f"{npz_path}: held-back tiles of the ranges cache are missing; pass --images DIR to recalibrate")
    try:
        with np.load(npz_path) as z:
            lr, hr = z["lr"].astype(np.float32) / 255.0, z["hr"].astype(np.float32) / 255.0
    except (OSError, ValueError, KeyError) as e:
        raise HRXError(f"{npz_path}: not readable ({type(e).__name__}); pass --images DIR to recalibrate") from None
    return RangesCache(key, ranges, lr, hr, doc.get("images", ""), doc.get("calib_images", []),
                       doc.get("held_back_images", []), doc.get("padded", []))
