"""A PNG screenshot of an HTML report in the headless Chromium the browser tests use (docs/reports.md's pictures).

    python scripts/screenshot_page.py PAGE.html OUT.png [--width 1100] [--height 900] [--scroll-to CSS]

``--scroll-to``: the first element matching the CSS selector is scrolled to the top before the shot.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import CHROMIUM_ARGS, chromium_path, open_page, screenshot  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--scroll-to", default=None)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        opened = open_page(browser, args.page, args.width, args.height)
        if opened.errors:
            print(f"error: {args.page}: {opened.errors[0]}", file=sys.stderr)
            return 1
        if args.scroll_to:
            opened.page.locator(args.scroll_to).first.evaluate("e => e.scrollIntoView()")
        screenshot(opened.page, args.out)
        browser.close()
    from PIL import Image

    with Image.open(args.out) as im:  # a smaller palette PNG: the docs stay light
        im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"{args.out}: {args.out.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
