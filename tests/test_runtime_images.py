"""Image decode / encode: modes, 16-bit, EXIF orientation, ICC, broken files, atomic writes."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from hrx.errors import HRXError
from hrx.paths import atomic_write
from hrx.runtime.images import FORMATS, Picture, read_image, to_pil, write_image

RNG = np.random.default_rng(0)


def _rgb(h: int = 6, w: int = 9) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode,channels,has_alpha,bits", [
    ("RGB", 3, False, 8), ("RGBA", 3, True, 8), ("L", 1, False, 8), ("LA", 1, True, 8), ("1", 1, False, 8),
    ("P", 3, False, 8), ("CMYK", 3, False, 8), ("I;16", 1, False, 16),
])
def test_modes(tmp_path, mode, channels, has_alpha, bits):
    base = Image.fromarray(_rgb())
    im = Image.fromarray((np.arange(54, dtype=np.uint16).reshape(6, 9) * 1200)) if mode == "I;16" else base.convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    im.save(path)
    pic = read_image(path)
    assert pic.color.shape == (6, 9, channels) and pic.color.dtype == np.float32
    assert (pic.alpha is not None) == has_alpha and pic.bits == bits
    assert 0.0 <= pic.color.min() and pic.color.max() <= 1.0
    if mode == "I;16":
        np.testing.assert_allclose(pic.color[..., 0] * 65535, np.asarray(im), atol=1e-2)


def test_palette_with_transparency_keeps_alpha(tmp_path):
    im = Image.fromarray(_rgb()).convert("P")
    im.info["transparency"] = 0
    im.save(tmp_path / "p.png", transparency=0)
    assert read_image(tmp_path / "p.png").alpha is not None


def test_sixteen_bit_round_trip(tmp_path):
    values = (np.arange(20, dtype=np.uint16).reshape(4, 5) * 3001 + 7)
    Image.fromarray(values).save(tmp_path / "in.png")
    pic = read_image(tmp_path / "in.png")
    for fmt in ("png", "tiff"):
        out = write_image(tmp_path / f"out{FORMATS[fmt][1]}", pic, fmt)
        with Image.open(out) as back:
            assert back.mode.startswith("I;16")
            np.testing.assert_array_equal(np.asarray(back), values)
    with Image.open(write_image(tmp_path / "out.jpg", pic, "jpeg")) as back:  # no 16-bit JPEG: 8-bit L
        assert back.mode == "L"


def test_exif_orientation_applied_and_tag_removed(tmp_path):
    arr = _rgb(4, 10)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    exif[0x010F] = "HRX test camera"
    im.save(tmp_path / "o.png", exif=exif.tobytes())
    pic = read_image(tmp_path / "o.png")
    assert pic.color.shape == (10, 4, 3)
    np.testing.assert_allclose(pic.color * 255, np.rot90(arr, k=-1), atol=1e-3)
    out = write_image(tmp_path / "out.png", pic)
    with Image.open(out) as back:
        assert back.getexif().get(0x0112) is None and back.getexif().get(0x010F) == "HRX test camera"


def test_icc_profile_carried(tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(_rgb()).save(tmp_path / "c.png", icc_profile=icc)
    pic = read_image(tmp_path / "c.png")
    assert pic.icc == icc
    for fmt in ("png", "jpeg", "webp", "tiff"):
        with Image.open(write_image(tmp_path / f"out{FORMATS[fmt][1]}", pic, fmt)) as back:
            assert back.info.get("icc_profile") == icc, fmt


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("channels,alpha", [(3, True), (1, True), (1, False)])
def test_every_format_writes(tmp_path, fmt, channels, alpha):
    pic = Picture(RNG.random((5, 7, channels), dtype=np.float32), RNG.random((5, 7), dtype=np.float32) if alpha else None)
    with Image.open(write_image(tmp_path / f"o{FORMATS[fmt][1]}", pic, fmt)) as back:
        assert back.size == (7, 5)
        assert ("A" in back.mode) == (alpha and fmt not in ("jpeg", "bmp"))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims ``width x height`` (a decompression bomb's shape)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_broken_files(tmp_path):
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "ok.jpg")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "ok.jpg").read_bytes()[:300])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image\n")
    (tmp_path / "bomb.png").write_bytes(_png_claiming(60000, 60000))  # over Pillow's own limit too
    (tmp_path / "bomb2.png").write_bytes(_png_claiming(8000, 8000))  # under Pillow's, over ours
    (tmp_path / "folder.png").mkdir()
    expected = {"truncated.png": "truncated", "truncated.jpg": "truncated", "empty.png": "empty file",
                "text.jpg": "not an image", "bomb.png": "pixel limit", "bomb2.png": "pixel limit", "folder.png": "directory",
                "missing.png": "no such file"}
    for name, reason in expected.items():
        with pytest.raises(HRXError) as e:
            read_image(tmp_path / name)
        message = str(e.value)
        assert message.startswith(str(tmp_path / name)) and reason in message and "\n" not in message, message
    with pytest.raises(HRXError, match="over the pixel limit of 1,000"):
        read_image(tmp_path / "ok.png", max_pixels=1000)


def test_float_images_are_refused_by_name(tmp_path):
    Image.new("F", (4, 3)).save(tmp_path / "f.tif")
    with pytest.raises(HRXError, match=r"f\.tif: unsupported image mode F$"):
        read_image(tmp_path / "f.tif")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads unreadable files")
def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.png"
    Image.fromarray(_rgb()).save(path)
    path.chmod(0)
    with pytest.raises(HRXError, match="permission denied"):
        read_image(path)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.png"

    def half_then_crash(tmp):
        Path(tmp).write_bytes(b"\x89PNG partial")
        raise RuntimeError("disk on fire")

    def write_then_interrupt(tmp):
        Path(tmp).write_bytes(b"new")
        raise KeyboardInterrupt

    with pytest.raises(RuntimeError):
        atomic_write(target, half_then_crash)
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, write_then_interrupt)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"] and target.read_bytes() == b"old"
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"new"))
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"] and target.read_bytes() == b"new"


def test_atomic_write_syncs_the_file_before_the_rename(tmp_path, monkeypatch):
    """The crash guarantee: the data reaches the disk (fsync) before the new name points at it, and
    the folder entry after; images, checkpoints, exports and engines all go through this one function."""
    import stat

    from hrx import paths

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(paths.os, "fsync", lambda fd: (events.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode))),
                                                       real_fsync(fd))[1])
    monkeypatch.setattr(paths.os, "replace", lambda a, b: (events.append(("replace",)), real_replace(a, b))[1])
    write_image(tmp_path / "x.png", Picture(np.zeros((4, 4, 3), np.float32)))
    assert events[:2] == [("fsync", False), ("replace",)]
    if os.name == "posix":
        assert events[2:] == [("fsync", True)]


def test_to_pil_strided_input():
    """Outputs arrive as transposed views ([C, H, W] -> [H, W, C]); encoding must not care."""
    chw = RNG.random((3, 4, 6), dtype=np.float32)
    im = to_pil(Picture(chw.transpose(1, 2, 0)), "png")
    np.testing.assert_array_equal(np.asarray(im), (chw.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8))


# -- 16 bits per channel (imagecodecs PNG, tifffile TIFF) ----------------------------------------------

LAYOUTS = {1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}


def _samples16(channels: int, h: int = 6, w: int = 9) -> np.ndarray:
    a = RNG.integers(0, 65536, (h, w, channels), dtype=np.uint16)
    a[0, 0] = 257 * 3 + 1  # never a multiple of 257: an 8-bit detour would change it
    return a[..., 0] if channels == 1 else a


def _write16(path, samples: np.ndarray, icc: bytes | None = None) -> None:
    """An independent writer: imagecodecs for PNG, tifffile for TIFF (with the ICC profile)."""
    import imagecodecs
    import tifffile

    if path.suffix == ".png":
        path.write_bytes(imagecodecs.png_encode(samples))
    else:
        channels = 1 if samples.ndim == 2 else samples.shape[-1]
        tifffile.imwrite(path, samples, photometric="rgb" if channels >= 3 else "minisblack",
                         extrasamples=["unassalpha"] if channels in (2, 4) else None, iccprofile=icc)


def _read16(path) -> np.ndarray:
    import imagecodecs
    import tifffile

    return imagecodecs.png_decode(path.read_bytes()) if path.suffix == ".png" else tifffile.imread(path)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_sixteen_bit_every_layout_read_and_written_exactly(tmp_path, suffix, channels):
    samples = _samples16(channels)
    _write16(tmp_path / f"in{suffix}", samples)
    pic = read_image(tmp_path / f"in{suffix}")
    assert pic.bits == 16, LAYOUTS[channels]
    assert pic.color.shape == (6, 9, 1 if channels <= 2 else 3) and (pic.alpha is not None) == (channels in (2, 4))
    planes = np.dstack([pic.color] + ([pic.alpha[..., None]] if pic.alpha is not None else []))
    np.testing.assert_array_equal(np.rint(planes * 65535).astype(np.uint16).reshape(samples.shape), samples)
    fmt = "png" if suffix == ".png" else "tiff"
    back = _read16(write_image(tmp_path / f"out{suffix}", pic, fmt))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, samples)


@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_sixteen_bit_keeps_icc_and_exif(tmp_path, fmt):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "HRX test camera"
    pic = Picture(RNG.random((5, 7, 3), dtype=np.float32), RNG.random((5, 7), dtype=np.float32), 16, icc, exif.tobytes())
    out = write_image(tmp_path / f"o{FORMATS[fmt][1]}", pic, fmt)
    back = read_image(out)
    assert back.bits == 16 and back.icc == icc
    if fmt == "png":  # tifffile writes no EXIF IFD (docs/upscale.md)
        assert Image.open(out).getexif().get(0x010F) == "HRX test camera"
        assert back.exif is not None


@pytest.mark.parametrize("orientation", range(1, 9))
def test_sixteen_bit_exif_orientation_matches_pillow(tmp_path, orientation):
    arr = _rgb(4, 7)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(tmp_path / "o.png", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    deep = (arr.astype(np.uint16) * 257)
    import imagecodecs

    data = imagecodecs.png_encode(deep)  # the same pixels at 16 bits, with the same eXIf chunk
    from hrx.runtime.images import _png_chunk

    body = exif.tobytes()[6:]
    data = data[:33] + _png_chunk(b"eXIf", body) + data[33:]
    (tmp_path / "o16.png").write_bytes(data)
    pic = read_image(tmp_path / "o16.png")
    assert pic.bits == 16
    np.testing.assert_array_equal(np.rint(pic.color * 255).astype(np.uint8), expected)
    assert pic.exif is None  # the orientation tag was the only one, and it is applied


def test_sixteen_bit_to_eight_bit_formats(tmp_path):
    pic = Picture(RNG.random((5, 7, 3), dtype=np.float32), None, 16)
    for fmt in ("jpeg", "webp", "bmp"):
        with Image.open(write_image(tmp_path / f"o{FORMATS[fmt][1]}", pic, fmt)) as back:
            assert back.mode == "RGB"
    eight = Picture(RNG.random((5, 7, 3), dtype=np.float32), None, 8)  # 8-bit stays 8-bit
    with Image.open(write_image(tmp_path / "e.png", eight, "png")) as back:
        assert back.mode == "RGB"
    with Image.open(write_image(tmp_path / "e.tif", eight, "tiff")) as back:
        assert back.mode == "RGB"


def test_cmyk_with_a_broken_profile_fails_that_image(tmp_path):
    """A naive CMYK conversion would silently give wrong colours: the image fails with the reason."""
    path = tmp_path / "cmyk.tif"
    Image.fromarray(_rgb()).convert("CMYK").save(path, icc_profile=b"not an ICC profile at all")
    with pytest.raises(HRXError, match=r"cmyk.tif: its CMYK ICC profile cannot be converted to sRGB \("):
        read_image(path)


def test_to_uint_in_row_chunks_and_quantize_before_writing(tmp_path):
    from hrx.runtime.images import quantize, to_uint

    values = RNG.random((601, 5, 3), dtype=np.float32) * 1.2 - 0.1  # out of range on both sides, odd rows
    for bits, dtype, top in ((8, np.uint8, 255.0), (16, np.uint16, 65535.0)):
        expected = (np.clip(values, 0, 1) * np.float32(top) + np.float32(0.5)).astype(dtype)
        got = to_uint(values, bits, rows=64)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got, expected)
    deep = Picture(np.clip(values, 0, 1), np.clip(values[..., 0], 0, 1), 16)
    assert quantize(deep, "png").color.dtype == np.uint16 and quantize(deep, "jpeg").color.dtype == np.uint8
    assert quantize(deep, "webp").bits == 8 and quantize(deep, "tiff").alpha.dtype == np.uint16
    for fmt in ("png", "tiff", "jpeg"):  # writing the quantized picture == writing the float one
        a = write_image(tmp_path / f"f{FORMATS[fmt][1]}", deep, fmt)
        b = write_image(tmp_path / f"q{FORMATS[fmt][1]}", quantize(deep, fmt), fmt)
        assert a.read_bytes() == b.read_bytes(), fmt


def _compressible(h: int, w: int, channels: int, top: int) -> np.ndarray:
    """A gradient with noise: zlib levels make files of different sizes from it."""
    ramp = np.linspace(0, top * 0.8, w)[None, :, None] + np.linspace(0, top * 0.1, h)[:, None, None]
    noise = np.random.default_rng(1).integers(0, max(2, top // 64), (h, w, channels))
    return np.minimum(ramp + noise, top)


@pytest.mark.parametrize("fmt,bits,channels", [("png", 8, 3), ("png", 8, 4), ("png", 16, 3), ("tiff", 16, 4)])
def test_png_level_changes_size_not_pixels(tmp_path, fmt, bits, channels):
    """Every zlib level decodes to the same pixels; 0 stores, 9 is the smallest; the default is level 1."""
    from hrx.runtime.images import DEFAULT_PNG_LEVEL

    assert DEFAULT_PNG_LEVEL == 1
    top = 65535 if bits == 16 else 255
    values = _compressible(48, 64, channels, top).astype(np.float32) / top
    pic = Picture(np.ascontiguousarray(values[..., :3]), np.ascontiguousarray(values[..., 3]) if channels == 4 else None,
                  bits)
    suffix = FORMATS[fmt][1]
    files = {level: write_image(tmp_path / f"l{level}{suffix}", pic, fmt, png_level=level) for level in (0, 1, 6, 9)}
    default = write_image(tmp_path / f"default{suffix}", pic, fmt)
    decoded = {level: (_read16(path) if bits == 16 else np.asarray(Image.open(path))) for level, path in files.items()}
    for level in (1, 6, 9):
        np.testing.assert_array_equal(decoded[level], decoded[0])
    assert decoded[0].dtype == (np.uint16 if bits == 16 else np.uint8) and decoded[0].shape[-1] == channels
    sizes = {level: path.stat().st_size for level, path in files.items()}
    assert sizes[0] > sizes[1] > sizes[9], sizes
    assert default.read_bytes() == files[1].read_bytes()
    with pytest.raises(HRXError, match="0-9"):
        write_image(tmp_path / f"bad{suffix}", pic, fmt, png_level=10)

def test_an_unreadable_exif_block_is_a_warning_not_silence(tmp_path, monkeypatch):
    """A 16-bit TIFF whose EXIF Pillow cannot parse: the pixels are read, and one warning line names the
    file and says the output goes without EXIF."""
    from hrx.runtime import images

    pic = Picture(RNG.random((5, 7, 3), dtype=np.float32), None, 16)
    out = write_image(tmp_path / "deep.tiff", pic, "tiff")

    def unreadable(im, tiff=False):
        raise SyntaxError("not a TIFF IFD")

    monkeypatch.setattr(images, "_exif_without_orientation", unreadable)
    lines: list[str] = []
    back = read_image(out, warn=lines.append)
    assert back.bits == 16 and back.exif is None and back.color.shape == (5, 7, 3)
    assert lines == [f"{out}: its EXIF block is unreadable (SyntaxError: not a TIFF IFD); the output is written "
                     "without it"]
