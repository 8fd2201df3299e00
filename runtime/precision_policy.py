"""Which precision a CPU engine computes in: ``hrx upscale --precision auto|fp32|bf16|int8``.

``auto`` (OpenVINO):

* an INT8 Q/DQ file (``hrx calibrate``) runs as INT8, the ops around its INT8 convolutions in FP32 (as the
  calibration's quality gate measured them); a file exported in FP16/BF16 runs as written;
* FP32 when any output is written with more than 8 bits per channel, 16-bit images or 10-bit video (BF16
  keeps 8 bits of mantissa: below such a file's resolution), when the CPU has neither AMX-BF16 nor AVX512-BF16 (read from
  ``/proc/cpuinfo``; BF16 would be emulated, slower than FP32), or when the model says it misbehaves in
  BF16 (metadata ``bf16=False``);
* otherwise BF16 when it passes the fidelity gate: BF16 against FP32, both OpenVINO, on fixed photo tiles
  (``runtime/gate_photos``, or the user's ``--images``), PSNR >= ``min_psnr`` (50 dB; 8-bit rounding alone
  is about 59 dB). The gate is measured once per (model sha256, precision, CPU flags, OpenVINO version,
  images) and kept as JSON in ``cache_root()/precision-gate``; the threshold is applied on reading, so
  changing it needs no new measurement.

``fp32`` / ``bf16`` / ``int8`` are taken as asked, after checking they can run (BF16 needs the CPU
flags, INT8 a Q/DQ file). :attr:`PrecisionChoice.line` is the run's first line: what was chosen and why.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hrx.cpu import BF16_FLAGS, bf16_native, cpu_flags  # noqa: F401 - the policy reads the flags through these
from hrx.errors import HRXError
from hrx.export.onnx_tools import PRECISIONS, declared_precision
from hrx.interface import ModelInfo

PRECISION_CHOICES = ("auto", *PRECISIONS)  # fp16: TensorRT builds only (hrx.runtime.factory)
REPORTED_FLAGS = ("amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512_vnni", "avx512f")
DEFAULT_MIN_PSNR = 50.0
GATE_PHOTOS = Path(__file__).parent / "gate_photos"
GATE_IMAGES = 4  # photos taken from --images
GATE_SIDE = 128  # centre crops of that side (at most)
GATE_MERGE = "blend"  # how the gate's tiles are joined


def flags_summary(flags: frozenset[str]) -> str:
    """The flags that matter here, e.g. ``avx512_bf16 avx512_fp16 avx512f`` (``none`` when none)."""
    return " ".join(f for f in REPORTED_FLAGS if f in flags) or "none"


def is_int8(info: ModelInfo) -> bool:
    """Whether the file's metadata declares an INT8 Q/DQ graph (``int8-qdq``, ``int8-qdq-fp16`` ...)."""
    return declared_precision(info.precision) == "int8"


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str  # fp32 | bf16 | int8: what the run is
    compute: str  # fp32 | bf16: OpenVINO's inference precision for the float ops
    reason: str

    @property
    def line(self) -> str:
        """The line the run prints: ``precision: <precision> (<reason>)``."""
        return f"precision: {self.precision} ({self.reason})"


@dataclass(frozen=True)
class GateResult:
    psnr: float  # dB, BF16 against FP32 over every gate tile
    tiles: int
    source: str  # "bundled photos" or the --images folder
    cached: bool = False

    def passed(self, min_psnr: float) -> bool:
        """Whether the measured PSNR reaches ``min_psnr``."""
        return self.psnr >= min_psnr


def choose_precision(requested: str, path: str | os.PathLike, info: ModelInfo, *, deep_output: bool = False,
                     images: str | os.PathLike | None = None, min_psnr: float = DEFAULT_MIN_PSNR,
                     flags: frozenset[str] | None = None, sha256: str = "") -> PrecisionChoice:
    """The precision OpenVINO runs ``path`` in for ``--precision requested`` (see the module doc); ``sha256``:
    the file's, when the caller has it already."""
    if requested not in PRECISION_CHOICES:
        raise HRXError(f"unknown precision {requested!r}; choose from {', '.join(PRECISION_CHOICES)}")
    flags = cpu_flags() if flags is None else flags
    native = bf16_native(flags)
    if requested == "int8" or (requested == "auto" and is_int8(info)):
        if not is_int8(info):
            raise HRXError(f"{path}: --precision int8 needs an INT8 Q/DQ file (this one is {info.precision}); make "
                           f"one with `hrx calibrate {path} --images PHOTOS`")
        why = "asked" if requested == "int8" else "the file is an INT8 Q/DQ export"
        # the float ops around the INT8 convolutions in FP32: what hrx calibrate's quality gate measured
        return PrecisionChoice("int8", "fp32", f"{why}; the other ops in FP32")
    if is_int8(info):
        raise HRXError(f"{path}: an INT8 Q/DQ file runs with --precision int8 or auto, not {requested}")
    if requested == "fp32":
        return PrecisionChoice("fp32", "fp32", "asked")
    if requested == "bf16":
        if not native:
            raise HRXError(f"--precision bf16: this CPU has neither AMX-BF16 nor AVX512-BF16 (flags: "
                           f"{flags_summary(flags)}); use --precision auto or fp32")
        return PrecisionChoice("bf16", "bf16", "asked")
    if info.precision != "fp32":
        return PrecisionChoice(info.precision, "fp32", f"the file is a {info.precision} export; it runs as written")
    if deep_output:
        return PrecisionChoice("fp32", "fp32", "outputs deeper than 8 bits (16-bit images, 10-bit video); "
                                               "--precision bf16 to override")
    if not native:
        return PrecisionChoice("fp32", "fp32", f"this CPU has neither AMX-BF16 nor AVX512-BF16 (flags: "
                                               f"{flags_summary(flags)})")
    if not info.bf16:
        return PrecisionChoice("fp32", "fp32", f"{info.arch} is marked as not BF16-safe in its metadata")
    gate = fidelity_gate(path, info, images=images, flags=flags, sha256=sha256)
    passed = gate.passed(min_psnr)
    measured = (f"{gate.psnr:.1f} dB {'>=' if passed else '<'} {min_psnr:g} dB against FP32 on {gate.tiles} tiles "
                f"of {gate.source}{'; measured earlier' if gate.cached else ''}")
    if passed:
        return PrecisionChoice("bf16", "bf16", f"BF16 passed the fidelity gate: {measured}")
    return PrecisionChoice("fp32", "fp32", f"BF16 failed the fidelity gate: {measured}")


def gate_images(info: ModelInfo, images: str | os.PathLike | None = None) -> tuple[list[np.ndarray], str]:
    """The gate's pictures, float32 ``[C, H, W]`` in [0, 1] with the model's channels: the bundled photo
    crops, or centre crops (<= ``GATE_SIDE``) of the first ``GATE_IMAGES`` images of ``images``."""
    from PIL import Image

    from hrx.paths import image_files

    if images is not None:
        files, source = image_files(images)[:GATE_IMAGES], str(images)
        if not files:
            raise HRXError(f"{images}: no images for the fidelity gate")
    else:
        files, source = sorted(GATE_PHOTOS.glob("*.png")), "the bundled photos"
    if info.in_channels not in (1, 3):
        raise HRXError(f"the fidelity gate runs models of 1 or 3 channels, not {info.in_channels}")
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("L" if info.in_channels == 1 else "RGB")
        except (OSError, ValueError) as e:
            raise HRXError(f"{f}: cannot read it for the fidelity gate ({e})") from None
        w, h = im.size
        side_w, side_h = min(w, GATE_SIDE), min(h, GATE_SIDE)
        left, top = (w - side_w) // 2, (h - side_h) // 2
        arr = np.asarray(im.crop((left, top, left + side_w, top + side_h)), dtype=np.float32) / 255.0
        out.append(np.ascontiguousarray(arr.reshape(side_h, side_w, -1).transpose(2, 0, 1)))
    return out, source


def gate_key(path: str | os.PathLike, flags: frozenset[str], images: str | os.PathLike | None,
             sha256: str = "") -> str:
    """``<model sha256[:16]>-bf16-<hash of CPU flags, OpenVINO version, the gate's method, images>``
    (``sha256``: the model file's, when known): the method (crop side, photos taken, tile merge) and the
    bundled photos' contents are in it, so a changed gate measures again instead of reusing old verdicts."""
    from hrx.paths import file_sha256
    from hrx.runtime.openvino import openvino_version

    h = hashlib.sha256()
    h.update(" ".join(sorted(flags)).encode())
    h.update(openvino_version().encode())
    h.update(f"side={GATE_SIDE} images={GATE_IMAGES} merge={GATE_MERGE}".encode())
    if images is not None:
        from hrx.paths import image_files

        for f in image_files(images)[:GATE_IMAGES]:
            st = f.stat()
            h.update(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        for f in sorted(GATE_PHOTOS.glob("*.png")):
            h.update(f"{f.name}:{file_sha256(f)}".encode())
    return f"{(sha256 or file_sha256(path))[:16]}-bf16-{h.hexdigest()[:12]}"


def fidelity_gate(path: str | os.PathLike, info: ModelInfo, *, images: str | os.PathLike | None = None,
                  flags: frozenset[str] | None = None, cache: bool = True, sha256: str = "") -> GateResult:
    """PSNR of BF16 against FP32 (both OpenVINO) over the gate's pictures, measured once and cached
    (``sha256``: the model file's, when known; else read here, once)."""
    from hrx.paths import atomic_write_bytes, cache_root, file_sha256

    flags = cpu_flags() if flags is None else flags
    sha256 = sha256 or file_sha256(path)
    record = cache_root() / "precision-gate" / f"{gate_key(path, flags, images, sha256)}.json"
    if cache and record.is_file():
        try:
            data = json.loads(record.read_text())
            return GateResult(float(data["psnr"]), int(data["tiles"]), str(data["source"]), cached=True)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: measure again
    result = measure_gate(path, info, images, sha256)
    if cache:
        data = asdict(result) | {"model": str(path), "cpu_flags": flags_summary(flags)}
        data.pop("cached")
        try:
            atomic_write_bytes(record, (json.dumps(data, indent=2) + "\n").encode())
        except OSError:  # a read-only cache: measured again next time
            pass
    return result


def measure_gate(path: str | os.PathLike, info: ModelInfo, images: str | os.PathLike | None = None,
                 sha256: str = "") -> GateResult:
    """PSNR of ``path`` in BF16 against FP32 on the gate images (bundled photos or ``images``)."""
    from hrx.metrics import psnr_from_mse

    pictures, source = gate_images(info, images)
    try:
        outputs, tiles = _gate_outputs(path, info, pictures, sha256)
    except HRXError as e:  # metadata that does not make a tiling, or disagrees with the graph: name the file
        if str(e).startswith(str(path)):
            raise
        raise HRXError(f"{path}: the fidelity gate cannot run it ({e})") from None
    sq = sum(float(np.sum((a.astype(np.float64) - b) ** 2)) for a, b in zip(*outputs))
    n = sum(a.size for a in outputs[0])
    return GateResult(psnr_from_mse(sq / n), tiles, source)


def _gate_outputs(path, info: ModelInfo, pictures: list[np.ndarray],
                  sha256: str = "") -> tuple[list[list[np.ndarray]], int]:
    """The pictures upscaled in FP32 and in BF16 (OpenVINO), clipped to [0, 1]; and the tiles per run."""
    from hrx.runtime.openvino import OpenVINOBackend
    from hrx.runtime.tiling import TileSpec, tile_count, upscale_tiled

    spec = TileSpec.from_info(info, merge=GATE_MERGE)
    outputs = []
    for precision in ("fp32", "bf16"):
        with OpenVINOBackend(path, precision=precision, sha256=sha256) as backend:
            outputs.append([np.clip(upscale_tiled(p, backend.infer, spec, infer_many=backend.infer_many), 0, 1)
                            for p in pictures])
    return outputs, sum(tile_count(p.shape[1], p.shape[2], spec) for p in pictures)
