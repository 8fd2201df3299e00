"""``hrx verify --html`` and ``hrx upscale --html``: the numbers on the pages, bad page paths refused before any
work, and both pages opened in headless Chromium (no console errors, every image decodes, the slider changes
what is shown, the screenshot is not blank)."""
from __future__ import annotations

import base64
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from browser import assert_not_blank, browser, open_page, screenshot  # noqa: F401 - browser is a fixture
from hrx.cli.main import app
from hrx.errors import HRXError
from hrx.export.compare import BackendReport, VerifyReport, VerifySample
from hrx.export.verify_page import (NAN_COLOUR, error_map, error_stats, full_scale, histogram_svg, verify_page,
                                    worst_window)
from hrx.pages import check_page_path, write_page
from hrx.runtime.gallery import GalleryOptions, gallery_page
from hrx.runtime.pipeline import ImageResult
from runtime_support import write_toy

runner = CliRunner()


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root may write anywhere but /sys)."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


def test_bad_page_paths_are_one_line_before_any_work(tmp_path, monkeypatch):
    import hrx.runtime.factory as factory

    def no_model(*args, **kwargs):
        raise AssertionError("the model was opened before the page path was checked")

    monkeypatch.setattr(factory, "open_backend", no_model)
    monkeypatch.setattr(factory, "default_engine", no_model)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    locked = _unwritable_folder(tmp_path)
    cases = {tmp_path / "nope" / "g.html": "no such folder", tmp_path: "is a folder",
             locked / "g.html": "cannot write the page in"}
    for page, reason in cases.items():
        res = runner.invoke(app, ["upscale", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--html", str(page)])
        assert res.exit_code == 1, res.output
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {page}: ") and reason in lines[0], lines
        assert not (tmp_path / "out").exists()
        # verify: the page is refused before the (missing) model is even looked at
        res = runner.invoke(app, ["verify", str(tmp_path / "none.onnx"), "--checkpoint", "x.pt", "--html", str(page)])
        assert res.exit_code == 1 and res.stderr.strip().splitlines() == lines, res.output
    assert check_page_path(tmp_path / "ok.html") == tmp_path / "ok.html"
    assert not list(tmp_path.glob(".ok.html*"))  # the probe file is gone
    with pytest.raises(HRXError):
        write_page(locked / "g.html", b"x")


def _planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A reference [3, 64, 64] and an output that differs by 2e-4 everywhere, 4 levels in an 8x8 block at
    (x=40, y=8) and is NaN at one value."""
    rng = np.random.default_rng(seed)
    ref = rng.random((3, 64, 64), dtype=np.float32)
    out = ref + np.float32(2e-4)
    out[1, 8:16, 40:48] += np.float32(4 / 255)
    out[0, 60, 3] = np.nan
    return ref, out


def test_error_numbers():
    ref, out = _planted()
    stats = error_stats(ref, out, limit=1e-3)
    assert stats.nans == 1 and not stats.passed
    assert stats.max_abs == pytest.approx(4 / 255 + 2e-4, rel=1e-4)
    clean = error_stats(ref, ref + np.float32(2e-4), limit=1e-3)
    assert clean.passed and clean.nans == 0 and clean.psnr == pytest.approx(73.98, abs=0.05)  # 10 log10(1 / 4e-8)
    assert [full_scale(v) for v in (0.0, 0.003, 1.0, 1.2, 4.1, 7, 20.5)] == [1.0, 0.005, 1.0, 2.0, 5.0, 10.0, 50.0]
    without_nan = np.where(np.isnan(out), ref, out)
    assert worst_window(ref, without_nan, 8) == (8, 40, 8)
    y, x, side = worst_window(ref, out, 8)  # a NaN outweighs any error
    assert y <= 60 < y + side and x <= 3 < x + side
    colours = error_map(ref, out, scale_levels=5.0)
    assert tuple(colours[60, 3]) == NAN_COLOUR
    inside, outside = colours[10, 42].astype(int), colours[30, 20].astype(int)
    assert inside.sum() > 400 and outside.sum() < 30  # 4.05 of 5 levels is bright; 0.05 levels is near black
    svg = histogram_svg(ref, out, 5.0)
    counts = [int(c) for c in re.findall(r"levels: (\d+)</title>", svg)]
    assert len(counts) == 32 and sum(counts) == ref.size - 1  # every finite value once
    assert counts[0] == ref.size - 1 - 64 and counts[int(4.05 / 5 * 32)] == 64


def _report(tmp_path: Path) -> VerifyReport:
    ref, bad = _planted()
    good = ref + np.float32(1e-6)
    sample = VerifySample("photo.png at (3, 5)", np.clip(ref[:, ::2, ::2], 0, 1), ref,
                          {"onnxrt-cpu": good, "openvino": bad})
    return VerifyReport(model=tmp_path / "m.onnx", inputs=1, atol=1e-4, rtol=1e-3, samples=[sample],
                        reports=[BackendReport("onnxrt-cpu", 1e-6, 1e-5, 120.0, True),
                                 BackendReport("openvino", 0.0159, 0.5, 60.0, False)],
                        bisect="first divergence at node 'node_conv2d_51' (Conv): max_abs=1.0e+00")


def test_verify_page_in_chromium(browser, tmp_path):
    page_path = write_page(tmp_path / "verify.html", verify_page(_report(tmp_path), "m.pt"))
    opened = open_page(browser, page_path)
    assert opened.errors == []
    # input, and per backend: reference, output, error map, three zoomed crops
    assert len(opened.images) == 1 + 2 * 6 and all(i["naturalWidth"] > 0 for i in opened.images), opened.images
    assert opened.page.inner_text("#verdict") == "FAIL"
    assert "node_conv2d_51" in opened.page.inner_text("#bisect")
    cases = opened.page.locator(".case")
    assert cases.count() == 2 and "PASS" in cases.nth(0).inner_text() and "NaN 1" in cases.nth(1).inner_text()
    assert opened.page.locator("svg.hist rect").count() == 64
    assert_not_blank(screenshot(opened.page))
    opened.page.context.close()


def _video(path: Path, frames: int = 4) -> Path:
    import av

    rng = np.random.default_rng(1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        base = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        for i in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.roll(base, i, axis=1).copy(), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_upscale_gallery_in_chromium(browser, tmp_path):
    pytest.importorskip("av")
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (20, 30), "b.jpg": (24, 16)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(src / name)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _video(src / "clip.mp4")
    engine = write_toy(tmp_path / "toy.onnx", tile=16)
    page_path = tmp_path / "pages" / "gallery.html"
    page_path.parent.mkdir()
    res = runner.invoke(app, ["upscale", str(src), "-o", str(tmp_path / "out"), "--engine", str(engine),
                              "--html", str(page_path)])
    assert res.exit_code == 1, res.output  # the broken image
    assert f"page: {page_path}" in res.stderr

    opened = open_page(browser, page_path)
    page = opened.page
    assert opened.errors == []
    assert len(opened.images) == 6 and all(i["naturalWidth"] > 0 for i in opened.images), opened.images
    assert [page.locator(".item h3").nth(k).inner_text() for k in range(3)] == ["a.png", "b.jpg", "clip.mp4"]
    assert "3 done, 1 failed" in page.inner_text("#verdict")
    failed = page.inner_text("table.failed")
    assert "broken.png" in failed and "truncated image" in failed
    facts = page.locator(".item p").first.inner_text()
    assert "30x20 \u2192 60x40 (x2)" in facts and " s" in facts
    meta = page.inner_text("header")
    assert "openvino" in meta and "fp32" in meta
    for k in range(page.locator(".item a").count()):  # links relative to the page, to files that exist
        href = page.locator(".item a").nth(k).get_attribute("href")
        assert href.startswith("../") and (page_path.parent / href).resolve().is_file(), href

    # the slider: all the way left shows the output, all the way right the bicubic input
    compare, slider = page.locator(".compare").first, page.locator("input.slider").first
    shots = {}
    for value in ("0", "100"):
        slider.fill(value)
        shots[value] = screenshot(compare).astype(int)
    assert np.abs(shots["0"] - shots["100"]).mean() > 5
    assert_not_blank(screenshot(page, tmp_path / "gallery.png"))
    opened.page.context.close()


def test_large_batch_embeds_thumbnails(tmp_path):
    rng = np.random.default_rng(2)
    results = []
    for k in range(3):
        src, out = tmp_path / f"s{k}.png", tmp_path / f"o{k}.png"
        Image.fromarray(rng.integers(0, 256, (50, 80, 3), dtype=np.uint8)).save(src)
        Image.fromarray(rng.integers(0, 256, (100, 160, 3), dtype=np.uint8)).save(out)
        results.append(ImageResult(str(src), str(out), "done", width=80, height=50, out_width=160, out_height=100,
                                   scale=2.0, seconds=0.5))
    from hrx.runtime.gallery import RunFacts

    facts = RunFacts("openvino", "fp32", "toy.onnx")
    sizes = {}
    for full_images in (3, 2):  # 3 images: full size; over the limit: thumbnails
        html = gallery_page(tmp_path / "g.html", results, [], facts, GalleryOptions(full_images=full_images,
                                                                                   thumb_side=64)).decode()
        uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', html)
        assert len(uris) == 6 and html.count('loading="lazy"') == 6
        sizes[full_images] = {Image.open(io.BytesIO(base64.b64decode(u))).size for u in uris}
    assert sizes == {3: {(160, 100)}, 2: {(64, 40)}}
