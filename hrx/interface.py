"""The contracts between the layers, in one home below export, calibration and runtime:

* :class:`ModelInfo` - what a deployed model says about itself: the ONNX ``metadata_props`` the
  exporter writes and the runtime, calibrator and TensorRT builder read. Nothing is passed twice.
  Keys (all strings in the ONNX file): ``arch, scale, in_channels, out_channels, tile, batch, ops,
  size_multiple, tile_overlap, opset, hrx_version, checkpoint_sha256`` and optionally ``precision``
  (``fp32`` default; ``fp16``/``bf16`` from ``hrx export --precision``, with ``io_precision`` and
  ``fp32_islands``; ``int8-qdq`` or ``int8-qdq-fp16`` after ``hrx calibrate``), ``quant_target``, and the size / dtype
  requirements a third-party model brings (spandrel's ``SizeRequirements`` and dtype support):
  ``min_size`` (smallest input side), ``square`` (inputs must be square; tiles always are), ``fp16`` /
  ``bf16`` (``False`` when the architecture is known to misbehave in that dtype). Absent keys mean the
  defaults (no minimum, not square, both dtypes fine), so older exports still read.
* :class:`Backend` - what every inference backend (ONNX Runtime, TensorRT, PyTorch, ...) offers. A
  backend runs a static batch of square tiles::

      infer(tiles: float32 [batch, in_channels, tile, tile] in [0, 1])
          -> float32 [batch, out_channels, tile * scale, tile * scale]

  Callers pad the last batch to ``batch`` tiles; backends check shapes and raise ``HRXError`` with
  a clear message on a mismatch. ``infer_many`` maps ``infer`` over a stream of batches (a backend
  with several batches in flight, like TensorRT's, overrides it); ``any_tile`` says that ``infer``
  also takes other sides (multiples of ``size_multiple``), so an image that fits in one tile runs
  whole; ``close`` frees the backend's resources.

Imports run one way: model -> export -> calibration / runtime -> cli; this module is the one import path
of ``Backend`` and ``ModelInfo``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from hrx.errors import HRXError

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class ModelInfo:
    arch: str
    scale: int
    in_channels: int
    out_channels: int
    tile: int  # static input side: inputs are [batch, in_channels, tile, tile]
    batch: int
    size_multiple: int
    tile_overlap: int
    ops: str = "native"  # "native" (standard ONNX ops) or "plugin" (hrx:: custom ops)
    opset: int = 0
    hrx_version: str = ""
    checkpoint_sha256: str = ""
    precision: str = "fp32"
    min_size: int = 0
    square: bool = False
    fp16: bool = True
    bf16: bool = True
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    _INTS = ("scale", "in_channels", "out_channels", "tile", "batch", "size_multiple", "tile_overlap", "opset", "min_size")
    _BOOLS = ("square", "fp16", "bf16")
    # what a file may claim: values outside these come from a corrupted or hostile file, never from an export
    BOUNDS = {"scale": (1, 16), "in_channels": (1, 64), "out_channels": (1, 64), "tile": (1, 16384),
              "batch": (1, 4096), "size_multiple": (1, 4096), "tile_overlap": (0, 16384), "opset": (0, 1000),
              "min_size": (0, 16384), "max_batch": (0, 65536)}

    def to_props(self) -> dict[str, str]:
        """The metadata as the ONNX file stores it: every field as text, ``extra`` keys included."""
        d = {f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "extra"}
        d.update(self.extra)
        return d

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> "ModelInfo":
        """Parse and check metadata read from ``source``; one-line :class:`HRXError` naming it when a key is missing
        or out of bounds."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        required = {"arch", "scale", "in_channels", "out_channels", "tile", "batch", "size_multiple", "tile_overlap"}
        missing = sorted(required - set(props))
        if missing:
            raise HRXError(f"{source}: not an HRX export (metadata lacks {', '.join(missing)}); export it with `hrx export`")
        kw: dict = {k: props[k] for k in names if k in props}
        for k in cls._INTS:
            if k in kw:
                kw[k] = bounded_int(kw[k], cls.BOUNDS[k], source, k)
        for k in cls._BOOLS:
            if k in kw:
                kw[k] = parse_flag(kw[k])
        if kw["tile"] % kw["size_multiple"]:  # what hrx export writes, and the tiler needs
            raise HRXError(f"{source}: metadata key 'tile' = {kw['tile']} is not a multiple of size_multiple "
                           f"{kw['size_multiple']}")
        for k in ("arch", "ops", "hrx_version", "checkpoint_sha256", "precision"):
            if k in kw and not isinstance(kw[k], str):
                raise HRXError(f"{source}: metadata key {k!r} is not text")
        extra = {k: v for k, v in props.items() if k not in names}
        if "max_batch" in extra:
            bounded_int(extra["max_batch"], cls.BOUNDS["max_batch"], source, "max_batch")
        return cls(**kw, extra=extra)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike) -> "ModelInfo":
        """Read the metadata of an ONNX file without loading its weights (nor the ``onnx`` package)."""
        return cls.from_props(read_onnx_metadata(path), str(path))


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """``metadata_props`` of an ONNX file as a dict, read from the protobuf wire format: the graph is
    skipped, not parsed, and neither ``onnx`` nor ``protobuf`` is needed (the base install has neither)."""
    import mmap

    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            props: dict[str, str] = {}
            for field_number, value in _proto_fields(buf, 0, len(buf)):
                if field_number == _MODEL_METADATA_PROPS:
                    entry = dict(_proto_fields(buf, *value))  # StringStringEntryProto: key = 1, value = 2
                    key, val = (bytes(buf[slice(*entry.get(n, (0, 0)))]).decode() for n in (1, 2))
                    props[key] = val
            return props
    except (ValueError, UnicodeDecodeError, TypeError) as e:  # mmap of an empty file raises ValueError too
        raise HRXError(f"{path}: not a readable ONNX file ({e})") from None


_MODEL_METADATA_PROPS = 14  # onnx.proto: ModelProto.metadata_props


def _proto_fields(buf, start: int, end: int) -> Iterator[tuple[int, tuple[int, int] | int]]:
    """``(field number, value)`` of the protobuf message in ``buf[start:end]``: length-delimited fields as
    ``(begin, end)`` offsets, varints and fixed-width ones as ints. Malformed bytes raise ValueError."""

    def varint(pos: int) -> tuple[int, int]:
        result = shift = 0
        while True:
            if pos >= end or shift > 63:
                raise ValueError("truncated or malformed protobuf")
            byte = buf[pos]
            result |= (byte & 0x7F) << shift
            pos, shift = pos + 1, shift + 7
            if not byte & 0x80:
                return result, pos

    pos = start
    while pos < end:
        key, pos = varint(pos)
        field_number, wire = key >> 3, key & 7
        if field_number == 0:
            raise ValueError("protobuf field number 0")
        if wire == 0:
            value, pos = varint(pos)
        elif wire == 2:
            length, pos = varint(pos)
            if pos + length > end:
                raise ValueError("truncated protobuf")
            value, pos = (pos, pos + length), pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > end:
                raise ValueError("truncated protobuf")
            value, pos = int.from_bytes(buf[pos:pos + size], "little"), pos + size
        else:
            raise ValueError(f"protobuf wire type {wire}")
        yield field_number, value


def parse_flag(value: object) -> bool:
    """A boolean metadata value: ``true``, ``1`` or ``yes`` (any case, spaces around) is true, anything else
    false. The one reading of ``square``, ``fp16``, ``bf16`` and the other flags a file carries."""
    return str(value).strip().lower() in ("true", "1", "yes")


def bounded_int(value: object, bounds: tuple[int, int], source: str, key: str) -> int:
    """``value`` (text or a number read from a file) as an int in ``bounds``; one line naming the file and
    the key otherwise."""
    shown = repr(value)[:40]
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        number = int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
    except (TypeError, ValueError, OverflowError):
        raise HRXError(f"{source}: metadata key {key!r} = {shown} is not an integer") from None
    low, high = bounds
    if not low <= number <= high:
        raise HRXError(f"{source}: metadata key {key!r} = {number} is out of range [{low}, {high}]")
    return number


def load_onnx(path: str | os.PathLike, **kwargs: Any) -> onnx.ModelProto:
    """``onnx.load`` with a one-line :class:`HRXError` naming the file when it is not ONNX."""
    import onnx

    try:
        return onnx.load(str(path), **kwargs)
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise HRXError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None


class Backend:
    """Base class of every inference backend (see the module doc).

    Threads: ``infer`` may be called from several threads at once only where ``thread_safe`` is True
    (OpenVINO: a pool of infer requests; ONNX Runtime: ``Run`` is thread-safe, and its CUDA path's one
    IoBinding is held under a lock; Triton: a client per thread). Elsewhere (TensorRT's execution context and
    stream slots, PyTorch) one thread at a time: the pool (:mod:`hrx.runtime.pool`) gives each such backend
    to one worker, and :class:`~hrx.runtime.pool.SharedSessions` each of its sessions to one thread at a time.
    ``close`` is called once no ``infer`` runs.
    """

    name: str = "backend"  # "onnxrt-cpu", "onnxrt-cuda", "tensorrt", "torch"
    info: ModelInfo  # tile, batch, scale, channels, overlap
    any_tile: bool = False  # infer also takes sides other than info.tile (multiples of size_multiple)
    thread_safe: bool = False  # infer may run on several threads at once (see above)

    def infer(self, tiles: np.ndarray) -> np.ndarray:  # pragma: no cover - every backend defines it
        """One batch of tiles in, upscaled tiles out (shapes in the module doc)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement infer")

    def infer_many(self, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Results of ``batches``, in order. This one runs them one at a time."""
        return map(self.infer, batches)

    def close(self) -> None:
        """Free what the backend holds; idempotent."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
