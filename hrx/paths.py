"""Files: where HRX keeps what it can rebuild (ONNX exports of bundled models, TensorRT engines),
the file-name suffixes every layer recognises, and the one crash-safe ``atomic_write``."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # what read_image decodes
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")  # serialized TensorRT engines


def cache_root() -> Path:
    """``$HRX_CACHE_DIR``, else ``$XDG_CACHE_HOME/hrx``, else ``~/.cache/hrx``."""
    if os.environ.get("HRX_CACHE_DIR"):
        return Path(os.environ["HRX_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "hrx"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def is_image_file(path: Path) -> bool:
    """A visible file with an image suffix (``IMAGE_SUFFIXES``, any case)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def image_files(folder: str | os.PathLike, what: str = "image", option: str = "--images") -> list[Path]:
    """The image files under ``folder`` (recursively), sorted; a missing folder or a file is a
    one-line error (``{folder}: no such {what} folder`` / ``{option} must be a folder of images``)."""
    from hrx.errors import HRXError

    folder = Path(folder)
    if not folder.exists():
        raise HRXError(f"{folder}: no such {what} folder")
    if not folder.is_dir():
        raise HRXError(f"{folder}: {option} must be a folder of images")
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """``write(tmp)`` to a hidden temporary file beside ``path``, flush it to disk (fsync), then
    rename it onto ``path`` and flush the folder entry. A failure (or Ctrl-C) removes the temporary
    file: no half-written output is ever left, and after a crash ``path`` holds the old or the new
    content, whole. The folder must exist."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        _fsync(tmp, os.O_RDWR)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if os.name == "posix":  # the rename itself reaches the disk with the folder's entry
        _fsync(path.parent, os.O_RDONLY)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``, creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _fsync(path: str | os.PathLike, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
