"""Files: where HRX keeps what it can rebuild (ONNX exports of bundled models, TensorRT engines),
the file-name suffixes every layer recognises, and the one crash-safe ``atomic_write``."""
from __future__ import annotations

import functools
import glob
import hashlib
import os
import secrets
from pathlib import Path
from typing import Callable, Iterable, Sequence

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # what read_image decodes
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi", ".nut", ".ts", ".m2ts", ".mts")  # hrx upscale videos
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")  # serialized TensorRT engines


def cache_root() -> Path:
    """``$HRX_CACHE_DIR``, else ``$XDG_CACHE_HOME/hrx``, else ``~/.cache/hrx``."""
    if os.environ.get("HRX_CACHE_DIR"):
        return Path(os.environ["HRX_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "hrx"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file. Read once per process while the file keeps its size, times and inode: a run
    that checks the bundled model, reads the precision gate's record and opens the compiled-model cache
    hashes the model file once, not once for each."""
    st = os.stat(path)
    return _sha256(os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.lru_cache(maxsize=64)
def _sha256(path: str, *identity: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_image_file(path: Path) -> bool:
    """A visible file with an image suffix (``IMAGE_SUFFIXES``, any case)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def is_video_file(path: Path) -> bool:
    """A visible file with a video container suffix (``VIDEO_SUFFIXES``, any case)."""
    return path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith(".")


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


def new_run_id() -> str:
    """A short random id for one run: it tags the run's temporary files (``.NAME.RUNID.XXXX.tmp``), so a
    cleanup removes this run's leftovers and never another run's files in flight."""
    return secrets.token_hex(4)


def is_run_id(text: object) -> bool:
    """Whether ``text`` has the form of :func:`new_run_id` (so it can go into a file name pattern)."""
    return isinstance(text, str) and len(text) == 8 and all(c in "0123456789abcdef" for c in text)


def temporary_name(path: Path, tag: str = "") -> Path:
    """The hidden temporary file beside ``path`` that :func:`atomic_write` uses: ``.NAME.[TAG.]XXXXXXXX.tmp``."""
    return path.with_name(f".{path.name}.{tag + '.' if tag else ''}{secrets.token_hex(4)}.tmp")


def remove_temporaries(paths: Iterable[str | os.PathLike], tag: str) -> int:
    """Remove the temporary files that writers of run ``tag`` left beside ``paths`` (a killed process's
    ``.NAME.TAG.XXXXXXXX.tmp``); never those of another run. Returns how many were removed."""
    if not is_run_id(tag):
        raise ValueError(f"remove_temporaries needs a run id (new_run_id), not {tag!r}")
    removed = 0
    for path in map(Path, paths):
        if not path.parent.is_dir():
            continue
        for tmp in path.parent.glob(f".{glob.escape(path.name)}.{tag}.*.tmp"):
            try:
                tmp.unlink()
                removed += 1
            except OSError:
                pass
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], tag: str = "") -> Path:
    """``write(tmp)`` to a hidden temporary file beside ``path`` (:func:`temporary_name`, ``tag``: a run id),
    flush it to disk (fsync), then rename it onto ``path`` and flush the folder entry. A failure (or
    Ctrl-C) removes the temporary file: no half-written output is ever left, and after a crash ``path``
    holds the old or the new content, whole. The temporary file is created with its final mode (0666
    less the umask, applied by the kernel): the process umask is never changed. The folder must exist."""
    path = Path(path)
    tmp = _create_new(path, tag)
    try:
        write(str(tmp))
        _fsync(tmp, os.O_RDWR)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if os.name == "posix":  # the rename itself reaches the disk with the folder's entry
        _fsync(path.parent, os.O_RDONLY)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, tag: str = "") -> Path:
    """:func:`atomic_write` of ``data``, creating the folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), tag)


def atomic_write_all(items: Sequence[tuple[str | os.PathLike, bytes]], tag: str = "") -> None:
    """Several files that belong together (an engine and its record): every one is written to its
    temporary file and flushed to disk first, then they are renamed into place in the order given. A
    failure before the renames (the usual one: disk full) leaves every old file as it was; the renames
    themselves take microseconds, and a reader must still check that what it reads belongs together
    (the engine record carries the engine's sha256 for that)."""
    temps: list[Path] = []
    paths = [Path(p) for p, _ in items]
    try:
        for path, (_, data) in zip(paths, items):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _create_new(path, tag)
            temps.append(tmp)
            tmp.write_bytes(data)
            _fsync(tmp, os.O_RDWR)
        for path, tmp in zip(paths, temps):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            if os.path.exists(tmp):
                os.unlink(tmp)
    if os.name == "posix":
        for folder in dict.fromkeys(p.parent for p in paths):
            _fsync(folder, os.O_RDONLY)


def _create_new(path: Path, tag: str) -> Path:
    for _ in range(100):
        tmp = temporary_name(path, tag)
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


def _fsync(path: str | os.PathLike, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- one writer per output ----------------------------------------------------------------------------

def lock_name(output: Path) -> Path:
    """The hidden lock file of an image output while it is written: ``.NAME.hrx-lock`` beside it."""
    return output.with_name(f".{output.name}.hrx-lock")


class OutputLock:
    """An exclusive ``flock`` on a lock file or a folder, held while one output is written (:func:`hold_lock`).
    :meth:`release` removes the lock file (the folder, when it is empty), then lets the lock go."""

    def __init__(self, path: Path, fd: int | None, folder: bool) -> None:
        self.path, self._fd, self.folder = path, fd, folder

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # removed while still held: a run that opened it meanwhile sees it gone and takes a new one
            os.rmdir(self.path) if self.folder else os.unlink(self.path)
        except OSError:  # a folder with finished work in it stays, for the next run to resume from
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def hold_lock(path: str | os.PathLike, output: str | os.PathLike, folder: bool = False) -> OutputLock:
    """Take the lock of ``output`` without waiting: ``path`` is its lock file (created) or, with ``folder``,
    a folder (made, and kept). Another run holding it raises :class:`~hrx.errors.OutputBusy`, one line that
    names ``output`` and ``path``. The lock belongs to the open file, so two threads of one process exclude
    each other as two processes do; the kernel lets go of the lock of a process that dies (its lock file
    stays, and the next writer of that output takes it over). Where the filesystem keeps no locks, or
    without ``fcntl`` (not POSIX), nothing is locked."""
    import errno

    from hrx.errors import OutputBusy

    try:
        import fcntl
    except ImportError:
        return OutputLock(Path(path), None, folder)
    path = Path(path)
    for _ in range(100):
        try:
            if folder:
                path.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except FileNotFoundError:  # removed by its holder between the mkdir and the open: again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusy(f"{output}: another hrx run is writing it (it holds {path}); this run leaves it to "
                             "that one") from None
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.EBADF):
                return OutputLock(path, None, folder)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return OutputLock(path, fd, folder)
        os.close(fd)  # its holder removed it between our open and our lock: take the new one
    raise OutputBusy(f"{output}: its lock {path} keeps being replaced by other runs")
