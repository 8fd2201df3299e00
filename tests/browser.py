"""Pages opened in a real browser: Debian's ``chromium`` driven by Playwright's Python API (``scripts/setup.sh
--test`` installs both). Without them the browser tests skip with a line saying how to install them.

The browser runs headless with no network use of its own; a page's Content-Security-Policy lets nothing load
but its embedded images, and any request the page makes for something else is counted as an error."""
from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
INSTALL = "apt-get install -y chromium && pip install playwright (or bash scripts/setup.sh --test)"


def chromium_path() -> str | None:
    """The Chromium to drive: ``HRX_CHROMIUM``, else Debian's ``chromium`` on the PATH."""
    return os.environ.get("HRX_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for the module's tests, or a skip saying how to install it."""
    path = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(f"Playwright is not installed: {INSTALL}")
    if path is None:
        pytest.skip(f"Chromium is not installed: {INSTALL}")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class Opened:
    """A page as the browser showed it."""
    page: object  # playwright Page, still open
    errors: list[str] = field(default_factory=list)  # console errors, page errors, failed or outside requests
    images: list[dict] = field(default_factory=list)  # every <img>: src head, naturalWidth, naturalHeight


def open_page(browser, path: Path, width: int = 1280, height: int = 900) -> Opened:
    """Open ``path`` from disk, wait until it has loaded (every image decoded: lazy ones scrolled into view)."""
    context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
    page = context.new_page()
    opened = Opened(page)
    page.on("console", lambda m: opened.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: opened.errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: opened.errors.append(f"request failed: {r.url[:80]}"))
    page.on("request", lambda r: None if r.url.startswith(("data:", "file:")) else
            opened.errors.append(f"network request: {r.url[:80]}"))
    page.goto(path.resolve().as_uri(), wait_until="load")
    page.evaluate("""async () => {
        for (const img of document.images) { img.loading = "eager"; }
        await Promise.all(Array.from(document.images).map(img => img.decode().catch(() => null)));
    }""")
    opened.images = page.evaluate("""() => Array.from(document.images).map(img => (
        {src: img.currentSrc.slice(0, 30), naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight}))""")
    return opened


def screenshot(page, path: Path | None = None, **kwargs) -> np.ndarray:
    """A PNG screenshot (written to ``path`` when given) as uint8 ``[H, W, 3]``."""
    from PIL import Image

    data = page.screenshot(path=str(path) if path else None, **kwargs)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def assert_not_blank(shot: np.ndarray, min_colours: int = 50) -> None:
    """A screenshot that shows something: many distinct colours and no single colour over 95% of it."""
    flat = shot.reshape(-1, 3)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    assert len(colours) >= min_colours, f"only {len(colours)} colours: blank page?"
    assert counts.max() < 0.95 * len(flat), f"one colour covers {counts.max() / len(flat):.0%} of the screenshot"
