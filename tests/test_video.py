"""Videos through ``hrx upscale``: clips made here with PyAV (a moving pattern, 8- and 10-bit, variable frame
rate, AAC and Opus audio, a subtitle track, chapters), upscaled by a perturbed hrx-t x2 (PyTorch, whole
48x32 frames). Every stream, timestamp and level is checked against the input or the image path.
Segments on Ray actors: tests/test_ray.py (it has the cluster)."""
from __future__ import annotations

import dataclasses
import hashlib
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import hrx
from conftest import randomize_params
from hrx.runtime.tiling import TileSpec
from hrx.runtime.torch_backend import TorchBackend
from hrx.errors import HRXError
from hrx.runtime.video.options import parse_frames
from hrx.runtime.video import UPRIGHT, VideoOptions, output_color, plan_segments, upscale_video, work_folder
from hrx.runtime.video.planning import _select
from hrx.runtime.video.color import Color, from_rgb, tag, to_rgb

av = pytest.importorskip("av", reason="PyAV (pip install 'hrx[video]')")

W, H, FRAMES = 48, 32, 8
TB = Fraction(1, 1000)
VFR_PTS = [0, 40, 80, 170, 210, 250, 340, 380, 420, 460, 500, 540][:FRAMES]  # a 90 ms gap every third frame


def pattern(i: int, w: int = W, h: int = H) -> np.ndarray:
    """A moving colour pattern, float RGB [3, h, w] (smooth: 4:2:0 keeps it, a 10-bit frame has > 256 levels)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = i * 0.4
    return np.stack([0.5 + 0.45 * np.sin(xx / 7 + t), 0.5 + 0.45 * np.cos(yy / 5 - t),
                     (xx + yy + 4 * i) / (w + h + 4 * FRAMES)]).astype(np.float32)


def make_clip(path: Path, pix_fmt: str = "yuv420p", codec: str = "ffv1", audio: tuple[str, ...] = ("aac", "libopus"),
              subtitles: bool = True, chapters: bool = True, color: Color = Color(1, 1, 1, 1),
              codec_options: dict | None = None, size: tuple[int, int] = (W, H), rotation: int = 0,
              hflip: bool = False, sar: Fraction | None = None, picture=pattern, time_base: Fraction = TB,
              frame_pts: list[int] = VFR_PTS) -> Path:
    """``rotation`` (counter-clockwise degrees, ``hflip``): the display matrix; ``sar``: the pixel shape;
    ``picture(i, width, height)``: frame ``i``; ``frame_pts``: the frames' pts in ``time_base``."""
    with av.open(str(path), "w") as out:
        out.metadata["title"] = "test clip"
        v = out.add_stream(codec, rate=25)
        v.width, v.height, v.pix_fmt, v.time_base = *size, pix_fmt, time_base
        v.options = codec_options or {}
        v.codec_context.time_base = time_base
        if rotation or hflip:
            v.set_display_rotation(rotation, hflip=hflip)
        if sar is not None:
            v.codec_context.sample_aspect_ratio = sar
        v.codec_context.gop_size = 1 if codec == "ffv1" else 4  # key frames to cut segments at
        v.metadata["language"] = "und"
        tag(v.codec_context, color)
        a_streams = []
        for k, name in enumerate(audio):
            a = out.add_stream(name, rate=48000)
            a.layout = "stereo"
            a.metadata["language"], a.metadata["title"] = ("eng", "fra")[k], f"track {k}"
            a_streams.append(a)
        s = None
        if subtitles:
            s = out.add_mux_stream("subrip")
            s.time_base = TB
            s.metadata["language"] = "deu"
        if path.suffix == ".mkv" and subtitles:  # written with the header
            out.add_attachment("font.ttf", "font/ttf", b"\x00\x01\x00\x00 a font for the subtitles")
        for i, pts in enumerate(frame_pts):
            frame = from_rgb(picture(i, *size), pix_fmt, color)
            frame.pts, frame.time_base = pts, time_base
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
        rng = np.random.default_rng(0)
        for a in a_streams:
            for k in range(25):
                af = av.AudioFrame.from_ndarray((rng.random((2, 960)) * 0.1).astype(np.float32), format="fltp",
                                                layout="stereo")
                af.sample_rate, af.pts, af.time_base = 48000, k * 960, Fraction(1, 48000)
                out.mux(a.encode(af))
            out.mux(a.encode(None))
        if s is not None:
            for k, (t, text) in enumerate([(0, "first line"), (200, "<font color=\"#ff0000\">second</font>")]):
                p = av.Packet(text.encode())
                p.stream, p.pts, p.dts, p.duration, p.time_base = s, t, t, 150, TB
                out.mux(p)
        if chapters:
            out.set_chapters([{"id": 1, "start": 0, "end": 200, "time_base": TB, "metadata": {"title": "one"}},
                              {"id": 2, "start": 200, "end": 540, "time_base": TB, "metadata": {"title": "two"}}])
    return path


@pytest.fixture(scope="module")
def backend():
    torch.manual_seed(0)
    model = hrx.create_model("hrx-t", scale=2)
    randomize_params(model, 0.05)
    b = TorchBackend(model, tile=64)  # a 48x32 frame runs whole (one call per frame)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny frames: one thread is several times faster than two on a busy machine
    yield b
    torch.set_num_threads(threads)
    b.close()


def spec_of(backend) -> TileSpec:
    i = backend.info
    return TileSpec(i.tile, i.tile_overlap, i.scale, i.size_multiple, i.batch, "blend")


def frames_of(path: Path) -> list:
    with av.open(str(path)) as c:
        return [(f.pts, f.time_base, f.format.name, f.to_ndarray().copy()) for f in c.decode(video=0)]


def packets_of(path: Path, kind: str) -> list[list[tuple]]:
    with av.open(str(path)) as c:
        streams = [s for s in c.streams if s.type == kind]
        out = {s.index: [] for s in streams}
        for p in c.demux(*streams):
            if p.size:
                out[p.stream.index].append((bytes(p), float(p.pts * p.time_base)))
        return list(out.values())


@pytest.mark.slow
def test_streams_timestamps_metadata_kept(backend, tmp_path):
    src = make_clip(tmp_path / "clip.mkv")
    out = tmp_path / "out" / "clip.mkv"
    result = upscale_video(backend, spec_of(backend), src, out, VideoOptions(codec="ffv1", segment_frames=3))
    assert result.status == "done" and result.frames == FRAMES and result.segments == 3
    assert not work_folder(out).exists()  # the work folder goes once the output is complete
    a, b = frames_of(src), frames_of(out)
    assert [f[0] * f[1] for f in b] == [f[0] * f[1] for f in a] == [p * TB for p in VFR_PTS]  # VFR kept
    assert b[0][3].shape == (H * 2 * 3 // 2, W * 2)  # yuv420p, twice the size
    assert packets_of(out, "audio") == packets_of(src, "audio")  # AAC and Opus: byte for byte, same times
    subs = packets_of(out, "subtitle")
    assert subs == packets_of(src, "subtitle") and b"color=\"#ff0000\"" in subs[0][1][0]
    with av.open(str(src)) as ci, av.open(str(out)) as co:
        assert [(s.type, s.metadata.get("language"), s.metadata.get("title"), s.disposition) for s in co.streams] \
            == [(s.type, s.metadata.get("language"), s.metadata.get("title"), s.disposition) for s in ci.streams]
        assert [(c["start"] * c["time_base"], c["metadata"]) for c in co.chapters()] \
            == [(c["start"] * c["time_base"], c["metadata"]) for c in ci.chapters()]
        assert co.metadata["title"] == "test clip"
        assert [(s.name, s.mimetype, bytes(s.data)) for s in co.streams if s.type == "attachment"] \
            == [("font.ttf", "font/ttf", b"\x00\x01\x00\x00 a font for the subtitles")]
        v = co.streams.video[0].codec_context
        assert (int(v.colorspace), int(v.color_primaries), int(v.color_trc), int(v.color_range)) == (1, 1, 1, 1)


def test_frames_reach_the_encoder_with_their_input_pts(backend, tmp_path, monkeypatch):
    """Each upscaled frame is handed to the encoder with its input frame's pts in the input's time base (the
    VFR gaps included). Checked at the encoder, segment by segment: a wrong pts fails this assertion, where
    in a whole run it can first make the join refuse the segments' timestamps."""
    import hrx.runtime.video as video
    import hrx.runtime.video.codec as codec

    seen = []
    real_open = video.open_encoder

    class RecordingEncoder:
        def __init__(self, stream):
            self.stream = stream

        def encode(self, frame=None):
            if frame is not None:
                seen.append((frame.pts, frame.time_base))
            return self.stream.encode(frame)

    monkeypatch.setattr(codec, "open_encoder", lambda out, plan, options: RecordingEncoder(real_open(out, plan, options)))
    src = make_clip(tmp_path / "clip.mkv", audio=(), subtitles=False, chapters=False)
    options = VideoOptions(codec="ffv1", segment_frames=3)
    plan = video.probe(src, options, backend.info.scale)
    frames = [video.encode_segment(backend, spec_of(backend), plan, segment, str(tmp_path / f"{k}.mkv"), options)[0]
              for k, segment in enumerate(plan.segments)]  # the segments only: no join that could fail first
    assert seen == [(p, TB) for p in VFR_PTS]
    assert frames == [3, 3, 2]


def test_mkv_output_keeps_frame_times_of_another_time_base(backend, tmp_path):
    """An mp4 at 1/30000 (NTSC-style pts, multiples of 1001, with VFR gaps) into .mkv: the segments count
    milliseconds, so the join must put back the exact pts in the input's time base; the .mkv output then
    holds every frame time to its millisecond clock (at 1/1000 a lost pts would go unseen)."""
    tb = Fraction(1, 30000)
    pts = [k * 1001 for k in (0, 1, 2, 5, 6, 7, 10, 11)][:FRAMES]
    src = make_clip(tmp_path / "clip.mp4", audio=(), subtitles=False, chapters=False, time_base=tb, frame_pts=pts)
    out = tmp_path / "out" / "clip.mkv"
    result = upscale_video(backend, spec_of(backend), src, out, VideoOptions(codec="ffv1", segment_frames=3))
    assert result.status == "done" and result.segments == 3
    assert [f[0] for f in frames_of(src)] == pts and frames_of(src)[0][1] == tb
    got = [float(f[0] * f[1]) for f in frames_of(out)]
    want = [float(p * tb) for p in pts]  # 0, 33.367, 66.733, 166.833, ... ms
    assert len(got) == len(want) and max(abs(a - b) for a, b in zip(got, want)) <= 0.0005 + 1e-9, (got, want)


@pytest.mark.slow
def test_ffv1_equals_image_path(backend, tmp_path):
    """FFV1 in 10-bit GBR (lossless RGB) equals the image pipeline on the same decoded frames (16-bit PNGs)."""
    from hrx.runtime.images import Picture, read_image, write_image
    from hrx.runtime.pipeline import BatchOptions, Job, run_batch

    src = make_clip(tmp_path / "clip.mkv", audio=(), subtitles=False, chapters=False)
    out = tmp_path / "clip-up.mkv"
    upscale_video(backend, spec_of(backend), src, out, VideoOptions(codec="ffv1", pix_fmt="gbrp10le"))
    jobs = []
    with av.open(str(src)) as c:
        for k, frame in enumerate(c.decode(video=0)):
            write_image(tmp_path / f"f{k}.png", Picture(to_rgb(frame).transpose(1, 2, 0), None, 16), "png")
            jobs.append(Job(tmp_path / f"f{k}.png", tmp_path / "img" / f"f{k}.png"))
    report = run_batch(backend, jobs, spec_of(backend), BatchOptions())
    assert report.count("done") == FRAMES
    video = frames_of(out)
    assert len(video) == FRAMES
    assert {fmt for _, _, fmt, _ in video} == {"gbrp10le"}
    worst = 0.0
    with av.open(str(out)) as c:
        for job, frame in zip(jobs, c.decode(video=0)):
            image = read_image(job.output).color.transpose(2, 0, 1)  # [3, H, W] in [0, 1]
            worst = max(worst, float(np.abs(to_rgb(frame) - image).max()) * 255)
    assert worst <= 1.0, worst
    bicubic = torch.nn.functional.interpolate(torch.from_numpy(pattern(0)[None]), scale_factor=2, mode="bicubic")
    assert np.abs(read_image(jobs[0].output).color.transpose(2, 0, 1) - bicubic[0].numpy()).max() > 0.02  # not bicubic


@pytest.mark.slow
def test_frames_batched_in_one_call_equal_one_at_a_time(backend, tmp_path):
    """--batch 3 with a backend that takes whole frames: three frames per call (the last call two), the
    same frames as one call each (10-bit GBR FFV1, within a quarter of an 8-bit level)."""
    batched = TorchBackend(backend.model, tile=64, batch=3, fuse=False)  # the fixture's fused model
    calls = []
    infer = batched.infer
    batched.infer = lambda x: calls.append(len(x)) or infer(x)
    src = make_clip(tmp_path / "clip.mkv", audio=(), subtitles=False, chapters=False)
    options = VideoOptions(codec="ffv1", pix_fmt="gbrp10le", segment_frames=FRAMES)
    upscale_video(backend, spec_of(backend), src, tmp_path / "one.mkv", options)
    upscale_video(batched, spec_of(batched), src, tmp_path / "three.mkv", options)
    assert calls == [3, 3, 2]
    with av.open(str(tmp_path / "one.mkv")) as a, av.open(str(tmp_path / "three.mkv")) as b:
        pairs = list(zip(a.decode(video=0), b.decode(video=0)))
        assert len(pairs) == FRAMES
        worst = max(float(np.abs(to_rgb(x) - to_rgb(y)).max()) for x, y in pairs)
    assert worst * 255 <= 0.25, worst


@pytest.mark.slow
def test_ten_bit_stays_ten_bit(backend, tmp_path):
    src = make_clip(tmp_path / "deep.mkv", pix_fmt="yuv420p10le", audio=(), subtitles=False, chapters=False,
                    color=Color(9, 9, 14, 1))  # BT.2020, 10-bit transfer, limited
    out = tmp_path / "deep-up.mkv"
    result = upscale_video(backend, spec_of(backend), src, out, VideoOptions(codec="ffv1"))
    assert result.pix_fmt == "yuv420p10le"
    with av.open(str(out)) as c:
        ctx = c.streams.video[0].codec_context
        assert (int(ctx.colorspace), int(ctx.color_primaries), int(ctx.color_trc)) == (9, 9, 14)
        frame = next(c.decode(video=0))
        luma = np.frombuffer(frame.planes[0], "<u2").reshape(H * 2, -1)[:, :W * 2]
    assert len(np.unique(luma)) > 256 and luma.max() <= 940 and luma.min() >= 64


@pytest.mark.slow
def test_hdr_tags_and_mastering_metadata_kept(backend, tmp_path):
    """PQ BT.2020 10-bit HEVC with mastering display and light level SEI: the output (libx265, the input's
    family) carries the same tags and metadata, read back from its decoded frames."""
    from hrx.runtime.video.color import hdr_info

    master = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,50)"
    src = make_clip(tmp_path / "hdr.mkv", pix_fmt="yuv420p10le", codec="libx265", audio=(), subtitles=False,
                    chapters=False, color=Color(9, 9, 16, 1), size=(64, 64),  # x265 breaks on frames under 64
                    codec_options={"x265-params": f"master-display={master}:max-cll=1000,400:log-level=error"})
    out = tmp_path / "hdr-up.mkv"
    result = upscale_video(backend, spec_of(backend), src, out, VideoOptions(crf=20))
    assert (result.codec, result.pix_fmt) == ("libx265", "yuv420p10le")
    with av.open(str(src)) as a, av.open(str(out)) as b:
        before, after = hdr_info(next(a.decode(video=0))), hdr_info(next(b.decode(video=0)))
        ctx = b.streams.video[0].codec_context
        assert (int(ctx.colorspace), int(ctx.color_primaries), int(ctx.color_trc), int(ctx.color_range)) == (9, 9, 16, 1)
    assert after == before and after.light == (1000, 400) and after.luminance == (0.005, 1000.0)


@pytest.mark.slow
def test_interlaced_input_is_named_in_a_warning(backend, tmp_path):
    from hrx.runtime.video import probe

    src = make_clip(tmp_path / "tff.mkv", codec="libx264", audio=(), subtitles=False, chapters=False,
                    codec_options={"flags": "+ilme+ildct", "x264-params": "tff=1"})
    warnings: list[str] = []
    probe(src, VideoOptions(warn=warnings.append), 2)
    assert warnings == [f"{src}: interlaced video is upscaled as progressive frames (deinterlace it first for a "
                        "clean result)"]
    warnings.clear()
    probe(make_clip(tmp_path / "p.mkv", codec="libx264", audio=(), subtitles=False, chapters=False),
          VideoOptions(warn=warnings.append), 2)
    assert warnings == []


def _autorotate(frame, a: np.ndarray) -> np.ndarray:
    """What the ``ffmpeg`` command (fftools/ffmpeg_filter.c, autorotate) shows for a decoded ``frame`` whose
    pixels are ``a`` [H, W]: the transpose / hflip / vflip filters it inserts for the frame's display matrix."""
    from hrx.runtime.video import display_matrix

    m = display_matrix(frame) or (65536, 0, 0, 0, 65536, 0, 0, 0, 1 << 30)
    theta = -round(frame.rotation) % 360
    if theta == 90:
        return a.T if m[3] > 0 else np.rot90(a, -1)  # transpose=cclock_flip / transpose=clock
    if theta == 180:
        a = a[:, ::-1] if m[0] < 0 else a  # hflip
        return a[::-1] if m[4] < 0 else a  # vflip
    if theta == 270:
        return np.rot90(a, -1)[::-1] if m[3] < 0 else np.rot90(a)  # transpose=clock_flip / transpose=cclock
    return a[::-1] if m[4] < 0 else a


@pytest.mark.slow
def test_display_matrices_are_turned_upright_as_ffmpeg_shows_them(tmp_path):
    """The eight display matrices (quarter turns, with or without a mirror) as PyAV writes them: the plan turns
    the frames as the ffmpeg command's autorotate does, and the output size follows."""
    from hrx.runtime.video import probe

    a = np.arange(H * W, dtype=np.float32).reshape(1, H, W)
    seen = set()
    for degrees in (0, 90, 180, 270):
        for hflip in (False, True):
            src = make_clip(tmp_path / f"r{degrees}{hflip:d}.mp4", audio=(), subtitles=False, chapters=False,
                            rotation=degrees, hflip=hflip)
            plan = probe(src, VideoOptions(), 2)
            with av.open(str(src)) as c:
                expected = _autorotate(next(c.decode(video=0)), a[0])
            got = plan.orientation.upright(a)[0]
            assert np.array_equal(got, expected), (degrees, hflip, plan.orientation)
            assert (plan.out_width, plan.out_height) == (2 * got.shape[1], 2 * got.shape[0])
            assert bool(plan.orientation.describe()) == ((degrees, hflip) != (0, False))
            seen.add(got.tobytes())
    assert len(seen) == 8  # every orientation once


@pytest.mark.slow
def test_rotated_phone_video_comes_out_upright(backend, tmp_path, capsys):
    """An mp4 with a 90° display matrix, in three segments: every frame equals the same frames stored upright
    (lossless RGB in and out, so nothing but the turn can differ) and each decoded frame turned by numpy, then
    upscaled; the output has no display matrix; the fingerprint that resumes segments holds the turn."""
    from hrx.runtime.video.batch import VideoJob, run_videos
    from hrx.metrics import psnr
    from hrx.runtime.video import FrameUpscaler, probe
    from hrx.runtime.video.segments import _fingerprint

    def upright(i: int, w: int, h: int) -> np.ndarray:
        return np.ascontiguousarray(np.rot90(pattern(i), axes=(1, 2)))  # counter-clockwise, as players turn it

    common = dict(codec="ffv1", pix_fmt="gbrp10le", audio=(), subtitles=False, chapters=False)
    phone = make_clip(tmp_path / "phone.mp4", rotation=90, **common)
    plain = make_clip(tmp_path / "plain.mp4", size=(H, W), picture=upright, **common)
    options = VideoOptions(codec="ffv1", pix_fmt="gbrp10le", segment_frames=3)
    out = tmp_path / "phone-up.mkv"
    (result,) = run_videos(lambda job, progress: upscale_video(backend, spec_of(backend), job.source, job.output,
                                                               options, progress), [VideoJob(phone, out)], quiet=False)
    assert f"rotated 90° counter-clockwise upright, as players show it -> {out} " in capsys.readouterr().err
    upscale_video(backend, spec_of(backend), plain, tmp_path / "plain-up.mkv", options)
    assert result.orientation == "rotated 90° counter-clockwise" and result.segments == 3
    assert (result.width, result.height, result.out_width, result.out_height) == (W, H, 2 * H, 2 * W)
    turned, stored = frames_of(out), frames_of(tmp_path / "plain-up.mkv")
    assert len(turned) == FRAMES and turned[0][3].shape == (2 * W, 2 * H, 3)  # 2W rows of 2H pixels
    assert all(a[0] == b[0] and np.array_equal(a[3], b[3]) for a, b in zip(turned, stored))
    plan = probe(phone, options, 2)
    model = FrameUpscaler(backend, spec_of(backend), plan)
    with av.open(str(phone)) as a, av.open(str(out)) as b:
        for k, (x, y) in enumerate(zip(a.decode(video=0), b.decode(video=0))):
            assert y.rotation == 0
            expected = np.clip(model(np.ascontiguousarray(np.rot90(to_rgb(x), axes=(1, 2)))), 0, 1)
            assert psnr(to_rgb(y), expected) > 60 and psnr(to_rgb(y), expected[:, ::-1, ::-1]) < 30, k  # 71 / 8 dB
    key = _fingerprint(plan, options, spec_of(backend), backend.info, "")
    assert key != _fingerprint(dataclasses.replace(plan, orientation=UPRIGHT), options, spec_of(backend), backend.info,
                               "")  # segments of a run that did not turn the frames are not resumed


@pytest.mark.slow
def test_sample_aspect_ratio_kept(backend, tmp_path):
    """Anamorphic 16:15 stays 16:15: in H.264's own stream (any container) and in mp4's pasp (any codec);
    square pixels stay 1:1; Matroska with FFV1 cannot hold it, and a warning says so."""
    def sar_of(path: Path) -> tuple:
        """(the stream's, as ffprobe shows it; the codec's own, None where it stores none)."""
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            return s.sample_aspect_ratio, s.codec_context.sample_aspect_ratio

    common = dict(audio=(), subtitles=False, chapters=False)
    warnings: list[str] = []
    options = VideoOptions(frames=(0, 2), warn=warnings.append)
    cases = [(make_clip(tmp_path / "pal.mkv", codec="libx264", sar=Fraction(16, 15), **common), "libx264", ".mkv"),
             (make_clip(tmp_path / "pal.mp4", sar=Fraction(16, 15), **common), "ffv1", ".mp4"),
             (make_clip(tmp_path / "square.mkv", codec="libx264", sar=Fraction(1, 1), **common), "libx264", ".mkv")]
    for src, codec, suffix in cases:
        out = tmp_path / f"{src.stem}-{codec}{suffix}"
        result = upscale_video(backend, spec_of(backend), src, out, dataclasses.replace(options, codec=codec))
        sar = Fraction(1) if src.stem == "square" else Fraction(16, 15)
        assert sar_of(out) == sar_of(src) == (sar, sar if codec == "libx264" else None), (src, codec)
        assert result.sar == f"{sar.numerator}:{sar.denominator}"
    assert warnings == []
    upscale_video(backend, spec_of(backend), cases[1][0], tmp_path / "pal-ffv1.mkv",
                  dataclasses.replace(options, codec="ffv1"))
    assert warnings == [f"{cases[1][0]}: .mkv with ffv1 cannot hold the sample aspect ratio 16:15: its pixels show "
                        "square (.mp4, .mov, libx264 or libx265 keep it)"]


class _Interrupt:
    """The backend, interrupted (as by Ctrl-C) on its ``after``-th call."""

    def __init__(self, inner, after: int) -> None:
        self.inner, self.after, self.calls = inner, after, 0
        self.info, self.name, self.any_tile, self.infer_many = inner.info, inner.name, inner.any_tile, None

    def infer(self, x):
        self.calls += 1
        if self.calls == self.after:
            raise KeyboardInterrupt
        return self.inner.infer(x)


def _hashes(path: Path) -> list[tuple]:
    return [(pts, hashlib.sha256(arr.tobytes()).hexdigest()) for pts, _, _, arr in frames_of(path)]


@pytest.mark.slow
def test_interrupted_run_resumes_to_identical_frames(backend, tmp_path):
    src = make_clip(tmp_path / "clip.mkv", audio=("aac",), subtitles=False, chapters=False)
    options = VideoOptions(codec="ffv1", segment_frames=2)
    whole = tmp_path / "whole.mkv"
    upscale_video(backend, spec_of(backend), src, whole, options)
    out = tmp_path / "out.mkv"
    with pytest.raises(KeyboardInterrupt):
        upscale_video(_Interrupt(backend, 6), spec_of(backend), src, out, options)
    assert not out.exists()  # only a complete file ever appears at the output path
    finished = sorted(p.name for p in work_folder(out).glob("seg-*.mkv"))
    assert finished == ["seg-00000.mkv", "seg-00001.mkv"]  # frames 0-3 in two closed segments
    assert not list(out.parent.glob(".out.mkv.*.tmp")) and not list(work_folder(out).glob(".*.tmp"))
    result = upscale_video(backend, spec_of(backend), src, out, options)
    assert result.resumed_segments == 2 and result.frames == FRAMES
    assert _hashes(out) == _hashes(whole)
    assert packets_of(out, "audio") == packets_of(src, "audio")


# -- hrx upscale ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = hrx.create_model("hrx-t", scale=2)
    randomize_params(model, 0.05)
    return hrx.save_model(model, tmp_path_factory.mktemp("video_ckpt") / "t.pt")


def _upscale(*args: str, tile: int = 64):
    from typer.testing import CliRunner

    from hrx.cli.main import app

    threads = torch.get_num_threads()
    try:
        return CliRunner().invoke(app, ["upscale", *args, "--tile", str(tile), "--threads", "1"])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_cli_folder_of_videos_and_images_with_bad_files(checkpoint, tmp_path):
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    make_clip(folder / "clip.mkv", audio=("aac",), chapters=False)
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(folder / "still.png")
    good = make_clip(tmp_path / "whole.mp4", codec="libx264", audio=("aac",), subtitles=False, chapters=False)
    (folder / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with av.open(str(folder / "sound.mkv"), "w") as c:  # audio only
        a = c.add_stream("aac", rate=48000)
        af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        af.sample_rate, af.pts = 48000, 0
        c.mux(a.encode(af))
        c.mux(a.encode(None))
    out = tmp_path / "out"
    r = _upscale(str(folder), "-o", str(out), "--model", str(checkpoint), "--video-codec", "ffv1")
    assert r.exit_code == 1, r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {folder / 'sound.mkv'}: no video stream",
                      f"error: {folder / 'truncated.mp4'}: cannot open as a video (Invalid data found when "
                      "processing input)",
                      "error: 2 of 3 videos failed"]
    assert sorted(p.name for p in out.iterdir()) == ["clip.mkv", "still.png"]  # nothing else, no work folders
    assert len(frames_of(out / "clip.mkv")) == FRAMES


@pytest.mark.slow
def test_cli_one_output_file_range_and_streams_it_cannot_hold(checkpoint, tmp_path):
    src = make_clip(tmp_path / "clip.mkv", audio=("aac",))
    out = tmp_path / "cut.mp4"
    common = [str(src), "--model", str(checkpoint), "--video-codec", "libx264", "--crf", "0", "--preset", "ultrafast"]
    r = _upscale(*common, "-o", str(out), "--strict")
    assert r.exit_code == 1 and not out.exists()
    dropped = "#2 subtitle subrip (deu); #3 attachment font.ttf (font/ttf)"
    assert f"error: {src}: .mp4 cannot hold {dropped} (choose .mkv" in r.stderr, r.stderr
    r = _upscale(*common, "-o", str(out), "--frames", "2:6")
    assert r.exit_code == 0, r.output
    assert f"warning: {src}: .mp4 cannot hold {dropped}: dropped (.mkv keeps them)" in r.stderr
    got = frames_of(out)
    assert [f[0] * f[1] for f in got] == [p * TB for p in VFR_PTS[2:6]]
    with av.open(str(out)) as c:
        assert [s.type for s in c.streams][:2] == ["video", "audio"]  # then mp4's chapter track
        assert [ch["metadata"]["title"] for ch in c.chapters()] == ["one", "two"]
        assert c.streams.video[0].codec_context.name == "h264"


@pytest.mark.slow
def test_cli_corrupt_packet_is_a_counted_lost_frame(checkpoint, tmp_path):
    src = make_clip(tmp_path / "clip.mkv", audio=(), subtitles=False, chapters=False,
                    codec_options={"level": "3", "slicecrc": "1"})  # FFV1 with checksums
    with av.open(str(src)) as c:
        packets = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    data = bytearray(src.read_bytes())
    pos, size = packets[4]
    data[pos + size - 200:pos + size] = bytes(200)  # frame 4's last slice zeroed: its checksum fails, no frame
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    r = _upscale(str(bad), "-o", str(out), "--model", str(checkpoint), "--strict")
    assert r.exit_code == 1 and not (out / "bad.mkv").exists()
    assert f"error: {bad}: corrupt video data (Invalid data found when processing input); without --strict" \
        in r.stderr, r.stderr
    r = _upscale(str(bad), "-o", str(out), "--model", str(checkpoint))
    assert r.exit_code == 0, r.output
    assert f"warning: {bad}: 1 frame(s) lost to corrupt data (--strict to fail instead)" in r.stderr
    assert [f[0] for f in frames_of(out / "bad.mkv")] == VFR_PTS[:4] + VFR_PTS[5:]


@pytest.mark.slow
def test_killed_process_resumes_to_identical_frames(checkpoint, tmp_path):
    """SIGKILL in the middle of a run (a real process): only closed segments survive, no output file; the
    same command then finishes from them, frame for frame equal to an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    src = make_clip(tmp_path / "clip.mkv", audio=("aac",), subtitles=False, chapters=False)
    args = [str(src), "--model", str(checkpoint), "--video-codec", "ffv1", "--segment-frames", "1"]
    out = tmp_path / "out" / "clip.mkv"
    work = work_folder(out)
    child = subprocess.Popen([sys.executable, "-c", "from hrx.cli.main import main; main()", "upscale", *args,
                              "--tile", "32", "--threads", "1", "-q", "-o", str(out.parent)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # tiles of 32: slow enough to stop
    deadline = time.monotonic() + 120
    while not list(work.glob("seg-*.mkv")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    finished = len(list(work.glob("seg-*.mkv")))
    assert 1 <= finished < FRAMES and not out.exists(), child.stderr.read().decode()
    r = _upscale(*args, "-o", str(out.parent), tile=32)
    assert r.exit_code == 0 and f"{finished} of {FRAMES} segments resumed" in r.stderr, r.output
    r = _upscale(*args, "-o", str(tmp_path / "whole"), tile=32)
    assert r.exit_code == 0, r.output
    assert _hashes(out) == _hashes(tmp_path / "whole" / "clip.mkv")
    assert not work.exists()


def test_ranges_segments_and_colour_plans():
    pts = [0, 40, 80, 170, 210, 250, 340, 380]  # time base 1/1000
    assert _select(pts, TB, VideoOptions(frames=parse_frames("2:5"))) == (2, 5)
    assert _select(pts, TB, VideoOptions(frames=parse_frames("6:"))) == (6, 8)
    assert _select(pts, TB, VideoOptions(start=0.08, end=0.25)) == (2, 5)  # [80 ms, 250 ms)
    with pytest.raises(HRXError, match="selects no frames"):
        _select(pts, TB, VideoOptions(start=1.0))
    with pytest.raises(HRXError, match="expected A:B"):
        parse_frames("3")
    with pytest.raises(HRXError, match="either --frames or --start"):
        VideoOptions(frames=(0, 2), start=0.1)
    segments = plan_segments(pts, {0, 80, 170, 340}, 1, 8, 2, len(pts))  # cut at key frames, >= 2 frames each
    assert [(s.start, s.end, s.frames) for s in segments] == [(40, 170, 2), (170, 340, 3), (340, None, 2)]
    assert plan_segments(pts, {0}, 0, 5, 2, len(pts))[-1].end == 250  # a range ends at its first frame left out
    # RGB input written as YUV gets an explicit matrix; YUV written as GBR is tagged RGB, full range
    assert output_color(Color(0, 1, 13, 2), "gbrp", "yuv420p", 720) == Color(1, 1, 13, 1)
    assert output_color(Color(0, 1, 13, 2), "gbrp", "yuv420p", 480) == Color(6, 1, 13, 1)
    assert output_color(Color(9, 9, 16, 1), "yuv420p10le", "gbrp10le", 64) == Color(0, 9, 16, 2)
    assert output_color(Color(9, 9, 16, 1), "yuv420p10le", "yuv420p10le", 64) == Color(9, 9, 16, 1)


@pytest.mark.slow
def test_cli_h264_with_b_frames_in_mp4_to_av1_in_mkv(checkpoint, tmp_path):
    """H.264 with B-frames and AAC (priming packets before 0) in mp4, two segments of SVT-AV1 joined into
    mkv: every frame time and every audio packet where it was."""
    src = make_clip(tmp_path / "clip.mp4", codec="libx264", audio=("aac",), subtitles=False, chapters=False,
                    codec_options={"bf": "2"})
    out = tmp_path / "clip-av1.mkv"
    r = _upscale(str(src), "-o", str(out), "--model", str(checkpoint), "--video-codec", "libsvtav1",
                 "--segment-frames", "4", "--preset", "12")
    assert r.exit_code == 0, r.output
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name in ("libdav1d", "av1")
    assert [f[0] * f[1] for f in frames_of(out)] == [f[0] * f[1] for f in frames_of(src)] == [p * TB for p in VFR_PTS]
    (audio_in,), (audio_out,) = packets_of(src, "audio"), packets_of(out, "audio")
    assert [b for b, _ in audio_out] == [b for b, _ in audio_in]
    assert max(abs(a - b) for (_, a), (_, b) in zip(audio_in, audio_out)) <= 0.0005  # mkv counts milliseconds
    assert audio_out[0][1] < 0  # the AAC priming packet stays before 0 (nothing shifted)


# -- --report: one row per video ----------------------------------------------------------------------------

def _small_clip(path: Path, codec: str = "ffv1") -> Path:
    """A 64x64 clip of FRAMES frames, video only."""
    return make_clip(path, codec=codec, audio=(), subtitles=False, chapters=False, size=(64, 64))


def _statuses(rows: list[dict]) -> list[tuple]:
    return [(row["type"], row.get("status")) for row in rows]


@pytest.mark.slow
def test_report_has_a_row_per_video_done_or_failed(checkpoint, tmp_path):
    from hrx.runtime.report import read_report, unfinished_runs

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    _small_clip(folder / "good.mkv")
    bad = folder / "bad.mp4"
    bad.write_bytes(b"not a video at all " * 64)
    report = out / "report.jsonl"
    r = _upscale(str(folder), "-o", str(out), "--model", str(checkpoint), "--report", str(report))
    assert r.exit_code == 1 and r.stderr.splitlines()[-1] == "error: 1 of 2 videos failed", r.output
    rows = read_report(report)
    assert _statuses(rows) == [("run", None), ("video", "failed"), ("video", "done"), ("summary", None)]
    run = rows[0]["run"]
    assert rows[0] == {"type": "run", "run": run, "images": 0, "videos": 2}
    failed, done, summary = rows[1], rows[2], rows[3]
    assert failed["source"] == str(bad) and failed["frames"] == 0
    assert failed["reason"] == f"{bad}: cannot open as a video (Invalid data found when processing input)"
    assert f"error: {failed['reason']}" in r.stderr
    assert done["source"] == str(folder / "good.mkv") and done["output"] == str(out / "good.mkv")
    assert (done["frames"], done["codec"], done["out_width"], done["out_height"]) == (FRAMES, "ffv1", 128, 128)
    assert done["seconds"] > 0 and len(frames_of(out / "good.mkv")) == FRAMES
    assert {row["run"] for row in rows} == {run}
    assert (summary["videos_done"], summary["videos_failed"], summary["videos_skipped"]) == (1, 1, 0)
    assert summary["interrupted"] is False and "videos" not in summary and unfinished_runs(rows) == []


@pytest.mark.slow
def test_report_rows_of_images_and_videos_and_the_resumed_run(checkpoint, tmp_path):
    from PIL import Image

    from hrx.runtime.report import read_report, unfinished_runs

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    _small_clip(folder / "clip.mp4", codec="libx264")
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(folder / "still.png")
    report = tmp_path / "report.jsonl"
    args = [str(folder), "-o", str(out), "--model", str(checkpoint), "--report", str(report)]
    r = _upscale(*args)
    assert r.exit_code == 0, r.output
    first = read_report(report)
    assert _statuses(first) == [("run", None), ("video", "done"), ("image", "done"), ("summary", None)]
    assert (first[0]["images"], first[0]["videos"]) == (1, 1)
    assert first[1]["output"] == str(out / "clip.mp4")
    assert (first[1]["frames"], first[1]["codec"]) == (FRAMES, "libx264")
    assert first[2]["output"] == str(out / "still.png") and first[2]["out_width"] == 60
    assert (first[3]["done"], first[3]["videos_done"], first[3]["videos_failed"]) == (1, 1, 0)
    r = _upscale(*args, "--skip-existing")  # the same command resumed: a second run appended
    assert r.exit_code == 0, r.output
    rows = read_report(report)
    assert rows[:4] == first
    again = rows[4:]
    assert _statuses(again) == [("run", None), ("video", "skipped"), ("image", "skipped"), ("summary", None)]
    assert again[0]["run"] != first[0]["run"] and {row["run"] for row in again} == {again[0]["run"]}
    assert (again[0]["images"], again[0]["videos"]) == (1, 1)
    assert again[1]["source"] == str(folder / "clip.mp4") and again[1]["reason"] == "output exists"
    assert (again[3]["skipped"], again[3]["videos_skipped"], again[3]["videos_done"]) == (1, 1, 0)
    assert unfinished_runs(rows) == []


@pytest.mark.slow
def test_report_rows_are_on_disk_as_each_video_finishes(checkpoint, tmp_path, monkeypatch):
    """Ctrl-C during the second video: its report already held the start line and the first video's row,
    and ends with an interrupted summary (an unfinished run for the resume)."""
    import hrx.runtime.video as video
    from hrx.runtime.report import read_report, unfinished_runs

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    _small_clip(folder / "a.mkv")
    (folder / "b.mkv").write_bytes((folder / "a.mkv").read_bytes())
    report = tmp_path / "report.jsonl"
    real, seen = video.upscale_video, []

    def upscale(backend, spec, source, *args, **kwargs):
        if source.name == "b.mkv":
            seen.extend(read_report(report))
            raise KeyboardInterrupt
        return real(backend, spec, source, *args, **kwargs)

    monkeypatch.setattr(video, "upscale_video", upscale)
    r = _upscale(str(folder), "-o", str(out), "--model", str(checkpoint), "--report", str(report))
    assert r.exit_code == 130, r.output
    assert _statuses(seen) == [("run", None), ("video", "done")]
    rows = read_report(report)
    assert rows[:2] == seen and _statuses(rows[2:]) == [("summary", None)]
    assert rows[2]["interrupted"] is True and rows[2]["videos_done"] == 1
    assert unfinished_runs(rows) == [rows[0]["run"]]


# -- one video's failure is that video's alone ------------------------------------------------------------

def _faults(monkeypatch) -> None:
    """Each video named after a fault fails there (files ``decode``, ``infer``, ``nan``, ``encode``, ``mux``)."""
    import hrx.runtime.video as video
    import hrx.runtime.video.codec as codec
    import hrx.runtime.video.mux as mux
    import hrx.runtime.video.segments as segments

    def named(path, fault: str) -> bool:
        return Path(str(path)).name.split(".")[0] == fault or f".{fault}." in str(path)

    real_decode = video.decode_segment

    def decode(plan, segment, strict=False):
        if named(plan.source, "decode") and segment.index == 1:
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
        return real_decode(plan, segment, strict)

    class Broken:
        def __init__(self, inner, fault: str) -> None:
            self.inner, self.fault = inner, fault
            self.info, self.name, self.any_tile, self.infer_many = inner.info, inner.name, inner.any_tile, None

        def infer(self, x):
            if self.fault == "infer":
                raise RuntimeError("Exception from src/inference/src/infer_request.cpp: Infer failed")
            y = np.asarray(self.inner.infer(x)).copy()
            y[..., 5, 7] = np.nan
            return y

    real_init = video.FrameUpscaler.__init__

    def init(self, backend, spec, plan):
        fault = next((f for f in ("infer", "nan") if named(plan.source, f)), None)
        real_init(self, Broken(backend, fault) if fault else backend, spec, plan)

    real_from_rgb = codec.from_rgb

    def from_rgb(rgb, pix_fmt, color):
        if threading.current_thread().name == "hrx-video-encode" and encoding[0]:
            raise RuntimeError("the encoder thread died")
        return real_from_rgb(rgb, pix_fmt, color)

    import threading

    encoding = [False]
    real_encode = video.encode_segment

    def encode_segment(backend, spec, plan, *args, **kwargs):
        encoding[0] = named(plan.source, "encode")
        return real_encode(backend, spec, plan, *args, **kwargs)

    real_packets = mux._segment_packets

    def segment_packets(paths, stream, time_base):
        if named(paths[0].parent, "mux"):
            raise OverflowError("timestamp out of range")
        return real_packets(paths, stream, time_base)

    monkeypatch.setattr(codec, "decode_segment", decode)
    monkeypatch.setattr(video.FrameUpscaler, "__init__", init)
    monkeypatch.setattr(codec, "from_rgb", from_rgb)
    monkeypatch.setattr(segments, "encode_segment", encode_segment)
    monkeypatch.setattr(mux, "_segment_packets", segment_packets)


def test_each_fault_fails_its_video_alone_and_the_batch_goes_on(checkpoint, tmp_path, monkeypatch):
    """A decode error, an inference error, NaN from the model, an encoder error and a mux error, one per
    video: each is that video's failed row with its reason, the good video and the image are done, no
    output file appears for a failed video, and the exit code is 1."""
    from PIL import Image

    from hrx.runtime.report import read_report

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    good = _small_clip(folder / "good.mkv")
    faults = ("decode", "encode", "infer", "mux", "nan")
    for name in faults:
        (folder / f"{name}.mkv").write_bytes(good.read_bytes())
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(folder / "still.png")
    _faults(monkeypatch)
    report = tmp_path / "report.jsonl"
    r = _upscale(str(folder), "-o", str(out), "--model", str(checkpoint), "--report", str(report),
                 "--segment-frames", "2")
    assert r.exit_code == 1, r.output
    src = {name: folder / f"{name}.mkv" for name in faults}
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {src['decode']}: InvalidDataError: [Errno 1094995529] Invalid data found when processing input",
        f"error: {src['encode']}: RuntimeError: the encoder thread died",
        f"error: {src['infer']}: RuntimeError: Exception from src/inference/src/infer_request.cpp: Infer failed",
        f"error: {src['mux']}: OverflowError: timestamp out of range",
        f"error: {src['nan']}: the model output 3 NaN and 0 Inf values (the whole image in one call, frame at pts 0 "
        "of segment 0); nothing written",
        "error: 5 of 6 videos failed"], r.stderr
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["good.mkv", "still.png"]
    assert len(frames_of(out / "good.mkv")) == FRAMES
    rows = read_report(report)
    videos = {Path(row["source"]).stem: row for row in rows if row["type"] == "video"}
    assert {k: v["status"] for k, v in videos.items()} == {"decode": "failed", "encode": "failed", "good": "done",
                                                           "infer": "failed", "mux": "failed", "nan": "failed"}
    assert [f"error: {videos[k]['reason']}" for k in faults] == errors[:5]
    summary = rows[-1]
    assert (summary["done"], summary["videos_done"], summary["videos_failed"]) == (1, 1, 5)


def test_damaged_resume_state_fails_its_video_in_one_line(checkpoint, tmp_path, monkeypatch):
    """A video that failed half-way keeps its finished segments; a corrupt ``lost.json`` and then a missing
    timestamps file in that work folder each fail the video in one line naming the file (not a ValueError, not
    "cannot write"), and the other video is done every time."""
    import hrx.runtime.video as video
    import hrx.runtime.video.segments as segments

    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    _small_clip(folder / "a.mkv")
    (folder / "b.mkv").write_bytes((folder / "a.mkv").read_bytes())
    real = video.encode_segment

    def encode_segment(backend, spec, plan, segment, *args, **kwargs):
        if plan.source.endswith("a.mkv") and segment.index == 2:
            raise RuntimeError("inference failed")
        return real(backend, spec, plan, segment, *args, **kwargs)

    args = [str(folder), "-o", str(out), "--model", str(checkpoint), "--segment-frames", "2"]
    with monkeypatch.context() as m:
        m.setattr(segments, "encode_segment", encode_segment)
        r = _upscale(*args)
    assert r.exit_code == 1 and "error: 1 of 2 videos failed" in r.stderr, r.output
    work = work_folder(out / "a.mkv")
    assert sorted(p.name for p in work.glob("seg-*")) == ["seg-00000.json", "seg-00000.mkv", "seg-00001.json",
                                                          "seg-00001.mkv"]
    (work / "lost.json").write_text('{"0": 0, "1"')  # cut short
    r = _upscale(*args, "--skip-existing")
    assert r.exit_code == 1, r.output
    assert [line for line in r.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {work / 'lost.json'}: the resume state is unreadable (JSONDecodeError: Expecting ':' delimiter: "
        f"line 1 column 13 (char 12)); delete {work} to start this video again", "error: 1 of 2 videos failed"]
    (work / "lost.json").unlink()
    (work / "seg-00001.json").unlink()
    r = _upscale(*args)
    assert r.exit_code == 1, r.output
    assert [line for line in r.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {work / 'seg-00001.json'}: the timestamps file of a finished segment is missing; delete {work} and "
        "run again", "error: 1 of 2 videos failed"]
    assert not (out / "a.mkv").exists() and len(frames_of(out / "b.mkv")) == FRAMES


def test_a_damaged_tail_ends_decoding_with_the_frames_read():
    """Demuxing that fails past some packets (a damaged tail) ends the segment's frames there (the caller
    counts the rest as lost); --strict fails the video in one line. Never the demuxer's own exception."""
    from types import SimpleNamespace

    from hrx.runtime.video.codec import _decoded

    frames = [SimpleNamespace(pts=p, dts=None) for p in (0, 40, 80)]

    class Container:
        def demux(self, stream):
            for f in frames:
                yield SimpleNamespace(decode=lambda f=f: [f])
            raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")

    stream = SimpleNamespace(codec_context=SimpleNamespace(decode=lambda packet: []))
    assert [ts for ts, _ in _decoded(Container(), stream, Path("tail.mkv"), strict=False)] == [0, 40, 80]
    with pytest.raises(HRXError, match=r"^tail.mkv: corrupt video data, demuxing stopped \(Invalid data found when "
                                       r"processing input\); without --strict"):
        list(_decoded(Container(), stream, Path("tail.mkv"), strict=True))
