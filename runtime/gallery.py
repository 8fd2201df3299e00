"""``hrx upscale --html``: the batch as a page, every image with a before/after slider.

"Before" is the input scaled to the output's size with bicubic, "after" the output; both are embedded at
the same display size (:class:`GalleryOptions`: up to ``side`` pixels for a batch of up to ``full_images``
images, ``thumb_side`` pixels above that, so a large batch stays light), and each item links the full
output and the input relative to the page. A video gets the pair of its first frames (poster frames).
Failed files are listed with their reasons. The page is rendered by :mod:`hrx.pages`'s templates.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from hrx.errors import HRXError
from hrx.pages import Markup, fit, image_uri, join, page, relative_link, render, resize, to_rgb8


@dataclass(frozen=True)
class GalleryOptions:
    side: int = 1024  # display side of each pair in a small batch (the output's own size when smaller)
    thumb_side: int = 384  # display side above full_images images
    full_images: int = 24
    quality: int = 90  # JPEG quality of the embedded pictures


@dataclass(frozen=True)
class RunFacts:
    """What the page says about the run as a whole."""
    backend: str
    precision: str
    model: str
    seconds: float = 0.0


def before_after(source: np.ndarray, output: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 ``[h, w, 3]`` pair at the output's size fitted in ``side``: the input bicubic-scaled to the output's
    size, and the output (both then scaled down with Lanczos when larger than ``side``)."""
    out = to_rgb8(output)
    height, width = out.shape[:2]
    before = resize(to_rgb8(source), width, height, "bicubic")
    w, h = fit(width, height, side)
    return resize(before, w, h, "lanczos"), resize(out, w, h, "lanczos")


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as float ``[H, W, C]`` (hrx's own reader: 16-bit PNG / TIFF, EXIF orientation)."""
    from hrx.runtime.images import read_image

    return read_image(path).color


def poster_frame(path: str | Path) -> np.ndarray:
    """The first decoded frame of a video as uint8 ``[H, W, 3]``."""
    from hrx.runtime.video import open_input

    with open_input(Path(path)) as container:
        for frame in container.decode(video=0):
            return frame.to_ndarray(format="rgb24")
    raise HRXError(f"{path}: no video frame to show")


def _pair_item(name: str, before: np.ndarray, after: np.ndarray, facts: str, links: Markup, quality: int) -> Markup:
    h, w = after.shape[:2]
    return render("gallery_item.html", name=name, width=w, height=h, before=image_uri(before, "jpeg", quality),
                  after=image_uri(after, "jpeg", quality), facts=facts, links=links)


def _links(page_path: Path, output: str, source: str) -> Markup:
    return join([render("gallery_link.html", href=relative_link(output, page_path), text="output"),
                 render("gallery_link.html", href=relative_link(source, page_path), text="input")], " &middot; ")


def _problem_row(name: str, kind: str, reason: str) -> Markup:
    return render("gallery_failed.html", name=name, kind=kind, reason=reason)


def gallery_page(page_path: Path, images: Sequence, videos: Sequence, facts: RunFacts,
                 options: GalleryOptions = GalleryOptions()) -> bytes:
    """The page for the finished ``images`` (:class:`~hrx.runtime.pipeline.ImageResult`) and ``videos``
    (:class:`~hrx.runtime.video.VideoResult`). A file that cannot be read back for the page is listed with
    the reason instead of its pictures. Files are listed by path (a run finishes them in any order)."""
    images, videos = sorted(images, key=lambda r: r.source), sorted(videos, key=lambda v: v.source)
    done = [r for r in images if r.status == "done"] + [v for v in videos if v.status == "done"]
    side = options.side if len(done) <= options.full_images else options.thumb_side
    items, problems = [], []
    for r in images:
        name = Path(r.source).name
        if r.status == "failed":
            problems.append(_problem_row(r.source, "image", r.reason))
        if r.status != "done":
            continue
        try:
            before, after = before_after(read_rgb(r.source), read_rgb(r.output), side)
        except HRXError as e:
            problems.append(_problem_row(r.source, "image (page)", str(e)))
            continue
        text = (f"{r.width}x{r.height} \u2192 {r.out_width}x{r.out_height} (x{r.scale:g}), {r.seconds:.2f} s"
                + (f", {r.worker}" if r.worker else ""))
        items.append(_pair_item(name, before, after, text, _links(page_path, r.output, r.source), options.quality))
    for v in videos:
        if v.status == "failed":
            problems.append(_problem_row(v.source, "video", v.reason))
        if v.status != "done":
            continue
        try:
            before, after = before_after(poster_frame(v.source), poster_frame(v.output), side)
        except HRXError as e:
            problems.append(_problem_row(v.source, "video (page)", str(e)))
            continue
        text = (f"video, first frame: {v.width}x{v.height} \u2192 {v.out_width}x{v.out_height}, {v.frames} frames, "
                f"{v.codec} {v.pix_fmt}, {v.seconds:.1f} s")
        items.append(_pair_item(Path(v.source).name, before, after, text, _links(page_path, v.output, v.source),
                                options.quality))
    count = {s: sum(r.status == s for r in (*images, *videos)) for s in ("done", "failed", "skipped")}
    failed = render("gallery_problems.html", rows=join(problems)) if problems else Markup("")
    body = render("gallery.html", done=count["done"], failed=count["failed"], skipped=count["skipped"],
                  backend=facts.backend, precision=facts.precision, model=facts.model, seconds=f"{facts.seconds:.1f}",
                  verdict="fail" if count["failed"] else "pass",
                  side=side, items=join(items), problems=failed)
    return page(f"hrx upscale: {count['done']} done, {count['failed']} failed", body, script="slider.js")


def write_gallery(page_path: str | Path, images: Sequence, videos: Sequence, facts: RunFacts,
                  options: GalleryOptions = GalleryOptions()) -> Path:
    """:func:`gallery_page` written to ``page_path`` (atomically)."""
    from hrx.pages import write_page

    page_path = Path(page_path)
    return write_page(page_path, gallery_page(page_path, images, videos, facts, options))
