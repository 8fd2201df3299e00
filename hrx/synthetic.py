"""Synthetic training images, generated from a seed: for when photos are few.

* **Dead leaves** (Achddou et al., SSVM 2021): discs with a power-law size distribution occluding each
  other, each filled with a flat colour, a linear gradient or a texture (stripes, noise). Their
  statistics (scale invariance, occlusion edges) are close to natural images'.
* **Text**: lines of words in the TrueType fonts the machine has (Pillow's own font otherwise), in
  several sizes and colours, on flat or gradient backgrounds: sharp strokes and serifs.
* **Line art**: antialiased lines, polylines, ellipses and rectangles of several widths (drawn at 4x
  and reduced): thin edges at every angle.

:func:`synthetic_images` returns ``[(name, [3, H, W] float32 in [0, 1])]``; the same seed gives the
same images on the same fonts (the font files used are listed by :func:`font_files`).
"""
from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import torch

KINDS = ("leaves", "text", "lines")
FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path("/Library/Fonts"),
             Path("C:/Windows/Fonts"))


def font_files() -> list[Path]:
    """TrueType / OpenType fonts found in the usual system folders, sorted (may be empty)."""
    found: list[Path] = []
    for d in FONT_DIRS:
        if d.is_dir():
            found += [p for p in d.rglob("*") if p.suffix.lower() in (".ttf", ".otf")]
    return sorted(found)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 1.0, 3)


def _fill(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """``[h, w, 3]``: a flat colour (50%), a linear gradient (25%) or a texture (25%)."""
    kind = rng.choice(4, p=(0.5, 0.25, 0.125, 0.125))
    if kind == 0:
        return np.broadcast_to(_colour(rng), (h, w, 3))
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * x + np.sin(angle) * y)
    if kind == 1:
        t = (t - t.min()) / max(1e-6, float(np.ptp(t)))
        a, b = _colour(rng), _colour(rng)
        return a * (1 - t[..., None]) + b * t[..., None]
    if kind == 2:  # stripes
        period = rng.uniform(3.0, 24.0)
        s = 0.5 + 0.5 * np.sin(2 * np.pi * t / period)
        a, b = _colour(rng), _colour(rng)
        return a * (1 - s[..., None]) + b * s[..., None]
    base = _colour(rng)  # grainy texture
    return np.clip(base + rng.normal(0, rng.uniform(0.03, 0.15), (h, w, 1)), 0, 1)


def dead_leaves(rng: np.random.Generator, size: int, discs: int = 400) -> np.ndarray:
    """``[size, size, 3]`` float in [0, 1]: discs of radius ~ r^-3 on [size/120, size/4] in painting order,
    antialiased edges."""
    img = _fill(rng, size, size).copy()
    rmin, rmax = size / 120.0, size / 4.0
    # inverse CDF of p(r) ~ r^-3 on [rmin, rmax]
    u = rng.uniform(0, 1, discs)
    radii = (rmin**-2 - u * (rmin**-2 - rmax**-2)) ** -0.5
    for r in radii:
        cy, cx = rng.uniform(-r, size + r, 2)
        y0, y1 = max(0, int(cy - r - 1)), min(size, int(cy + r + 2))
        x0, x1 = max(0, int(cx - r - 1)), min(size, int(cx + r + 2))
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        alpha = np.clip(r - np.hypot(yy + 0.5 - cy, xx + 0.5 - cx) + 0.5, 0, 1)[..., None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - alpha) + _fill(rng, y1 - y0, x1 - x0) * alpha
    return img


def _words(rng: np.random.Generator, n: int) -> str:
    letters = string.ascii_letters + string.digits
    return " ".join("".join(rng.choice(list(letters), int(rng.integers(1, 10)))) for _ in range(n))


def text_image(rng: np.random.Generator, size: int, fonts: list[Path]) -> np.ndarray:
    """``[size, size, 3]``: lines of random words in random fonts, sizes and colours."""
    from PIL import Image, ImageDraw, ImageFont

    bg = (_fill(rng, size, size) * 255).astype(np.uint8) if rng.uniform() < 0.5 else \
        np.full((size, size, 3), (_colour(rng) * 255).astype(np.uint8))
    im = Image.fromarray(np.ascontiguousarray(bg))
    draw = ImageDraw.Draw(im)
    y = int(rng.integers(-8, 8))
    while y < size:
        px = int(rng.integers(7, 40))
        font = (ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), px) if fonts
                else ImageFont.load_default(size=px))
        fill = tuple(int(c) for c in (_colour(rng) * 255))
        draw.text((int(rng.integers(-20, 20)), y), _words(rng, 12), font=font, fill=fill)
        y += int(px * rng.uniform(1.0, 1.6))
    return np.asarray(im, dtype=np.float32) / 255.0


def line_art(rng: np.random.Generator, size: int, shapes: int = 60) -> np.ndarray:
    """``[size, size, 3]``: lines, polylines, ellipses and rectangles drawn at 4x and reduced (antialiased)."""
    from PIL import Image, ImageDraw

    big = size * 4
    im = Image.new("RGB", (big, big), tuple(int(c) for c in (_colour(rng) * 255)))
    draw = ImageDraw.Draw(im)
    for _ in range(shapes):
        fill = tuple(int(c) for c in (_colour(rng) * 255))
        width = int(rng.integers(1, 24))
        kind = int(rng.integers(4))
        pts = [tuple(int(v) for v in rng.uniform(-big * 0.1, big * 1.1, 2)) for _ in range(2 if kind != 1 else 5)]
        if kind == 0:
            draw.line(pts, fill=fill, width=width)
        elif kind == 1:
            draw.line(pts, fill=fill, width=width, joint="curve")
        else:
            (x0, y0), (x1, y1) = pts
            box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
            shape = draw.ellipse if kind == 2 else draw.rectangle
            shape(box, outline=fill, width=width, fill=fill if rng.uniform() < 0.3 else None)
    small = im.resize((size, size), Image.LANCZOS)
    return np.asarray(small, dtype=np.float32) / 255.0


def synthetic_images(count: int, seed: int, size: int = 384) -> list[tuple[str, torch.Tensor]]:
    """``count`` images, the kinds in turn (leaves, text, lines, leaves, ...), each from its own seed."""
    fonts = font_files()
    out = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        rng = np.random.default_rng([seed, i])
        arr = (dead_leaves(rng, size) if kind == "leaves" else text_image(rng, size, fonts) if kind == "text"
               else line_art(rng, size))
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1).contiguous()
        out.append((f"synthetic/{kind}-{i:03d}", (t * 255).round() / 255))
    return out
