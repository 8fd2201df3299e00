"""Self-contained HTML pages (``hrx verify --html``, ``hrx upscale --html``): templates, embedded images, the page file.

A page is data rendered by the templates in ``hrx/templates/`` (the standard library's ``string.Template``:
``$name`` placeholders, no logic; a repeated part is its own template rendered once per item). Every value
is HTML-escaped unless it is :class:`Markup` (a fragment rendered by :func:`render` or built from escaped
parts). Images are embedded as ``data:`` URIs; the page's Content-Security-Policy allows nothing else to load,
so it opens from disk with no network. Only numpy and Pillow are needed (the base install).
"""
from __future__ import annotations

import base64
import html
import io
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from string import Template

import numpy as np

from hrx.errors import HRXError
from hrx.paths import atomic_write_bytes


class Markup(str):
    """Text that is HTML already: :func:`render` inserts it as it is."""


def escape(value: object) -> Markup:
    """``value`` as HTML text (``Markup`` stays as it is)."""
    return value if isinstance(value, Markup) else Markup(html.escape(str(value)))


@lru_cache(maxsize=None)
def template_text(name: str) -> str:
    """The text of ``hrx/templates/NAME``."""
    return resources.files("hrx").joinpath("templates", name).read_text(encoding="utf-8")


def render(template: str, /, **values: object) -> Markup:
    """The template ``hrx/templates/TEMPLATE`` with every ``$key`` replaced by ``values[key]``, escaped
    (:class:`Markup` as it is). A placeholder without a value is a KeyError: templates and code stay in step."""
    return Markup(Template(template_text(template)).substitute({k: escape(v) for k, v in values.items()}))


def join(parts: list[Markup] | tuple[Markup, ...], sep: str = "\n") -> Markup:
    """Rendered fragments as one fragment."""
    return Markup(sep.join(escape(p) for p in parts))


def page(title: str, body: Markup, script: str = "") -> bytes:
    """A whole page: the shared style sheet, ``body``, and ``script`` (a template name, or "" for none)."""
    return render("page.html", title=title, style=Markup(template_text("report.css")), body=body,
                  script=Markup(template_text(script) if script else "")).encode("utf-8")


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """float ``[H, W]``, ``[H, W, 1 | 3 | 4]`` (values in [0, 1], NaN shown black) or uint8 -> uint8 ``[H, W, 3]``
    (gray repeated; alpha dropped)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8:
        arr = (np.clip(np.nan_to_num(arr.astype(np.float32), nan=0.0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])


def image_uri(image: np.ndarray, fmt: str = "png", quality: int = 90) -> str:
    """``data:`` URI of an image (see :func:`to_rgb8`): PNG (exact) or JPEG (photos, smaller)."""
    from PIL import Image

    buf = io.BytesIO()
    pil = Image.fromarray(to_rgb8(image))
    if fmt == "png":
        pil.save(buf, "PNG", optimize=True)
    else:
        pil.save(buf, "JPEG", quality=quality)
    mime = "image/png" if fmt == "png" else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def resize(image: np.ndarray, width: int, height: int, method: str = "bicubic") -> np.ndarray:
    """uint8 ``[H, W, 3]`` resized with Pillow (``bicubic``, ``lanczos``, ``nearest``)."""
    from PIL import Image

    if (image.shape[1], image.shape[0]) == (width, height):
        return image
    filters = {"bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS, "nearest": Image.NEAREST}
    return np.asarray(Image.fromarray(to_rgb8(image)).resize((width, height), filters[method]))


def fit(width: int, height: int, side: int) -> tuple[int, int]:
    """``(width, height)`` scaled down to fit a ``side`` x ``side`` square (never up)."""
    k = min(1.0, side / max(width, height, 1))
    return max(1, round(width * k)), max(1, round(height * k))


def relative_link(target: str | os.PathLike, page_path: Path) -> str:
    """``target`` as a link relative to the page's folder (URL-quoted), so the page and the files move together."""
    from urllib.parse import quote

    rel = os.path.relpath(Path(target).resolve(), page_path.resolve().parent)
    return quote(Path(rel).as_posix())


def check_page_path(path: str | os.PathLike) -> Path:
    """Refuse, before any work, a page path that cannot be written: a folder, a missing folder, a folder this
    process may not write in (tried with a probe file, so it also holds for root). One line naming the path."""
    path = Path(path)
    if path.is_dir():
        raise HRXError(f"{path}: is a folder; --html takes a file name (report.html)")
    folder = path.parent
    if not folder.is_dir():
        raise HRXError(f"{path}: cannot write the page: no such folder {folder}")
    probe = folder / f".{path.name}.probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as e:
        raise HRXError(f"{path}: cannot write the page in {folder} ({e.strerror or e})") from None
    probe.unlink(missing_ok=True)
    return path


def write_page(path: str | os.PathLike, data: bytes) -> Path:
    """The page, written atomically (a reader sees the old page or the new one, whole)."""
    try:
        return atomic_write_bytes(path, data)
    except OSError as e:
        raise HRXError(f"{path}: cannot write the page ({e.strerror or e})") from None
