"""Video throughput: `hrx upscale` on a clip against a Real-ESRGAN-style raw-pipe pipeline, same model and weights.

    python benchmarks/bench_video.py [--size 1280x720] [--frames 24] [--model hrx-t] [--tile 0] [--threads 0]
                                     [--rounds 2]

The clip (libx264 yuv420p, a moving textured pattern, AAC audio) is made here. Both sides run the same
PyTorch model (``--model``: a bundled name or checkpoint; ``hrx-t``: hrx-t x2 with perturbed weights):

* hrx: :func:`hrx.runtime.video.upscale_video` (decode and encode on their own threads, stream matrix to
  float RGB, the tiled runtime, exact timestamps, audio copied), libx264 ``--crf 18``. ``--tile 0`` (default)
  makes the tile cover the frame, so both sides run one whole-frame call per frame and differ only in
  the pipeline around it; ``--tile 256`` shows the cost of tiling on top.
* raw pipe (what Real-ESRGAN's video script does through ffmpeg pipes, here in-process with PyAV since no
  ffmpeg binary is assumed): decode to rgb24 bytes, one PyTorch call per whole frame, rgb24 back to the
  same encoder, one thread, no timestamps, no audio.

Then the hrx path's parts alone on the same clip: decode (to float RGB), inference, encode; their shares
of the sum say how much decode / encode cost next to inference. Peak memory (max RSS of a fresh process
running hrx on the clip at ``--frames`` and at four times as many frames) shows whether memory follows the
video's length. The two pipelines alternate for
``--rounds`` rounds (the first warms the model up) and each keeps its fastest. Prints one table; recorded with
benchmarks/results.py.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_clip(path: Path, width: int, height: int, frames: int) -> Path:
    import av

    rng = np.random.default_rng(0)
    texture = rng.random((height + 64, width + 64, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=24)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.options = {"crf": "18", "preset": "veryfast"}
        a = out.add_stream("aac", rate=48000)
        a.layout = "stereo"
        for i in range(frames):
            base = np.stack([0.5 + 0.4 * np.sin(xx / 40 + i / 5), 0.5 + 0.4 * np.cos(yy / 30 - i / 7),
                             0.5 + 0.4 * np.sin((xx + yy) / 50 + i / 3)], -1)
            img = np.clip(0.7 * base + 0.3 * texture[i % 64:i % 64 + height, i % 64:i % 64 + width], 0, 1)
            frame = av.VideoFrame.from_ndarray((img * 255).astype(np.uint8), format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
        for k in range(int(frames / 24 * 48000 / 1024) + 1):
            af = av.AudioFrame.from_ndarray((rng.random((2, 1024)) * 0.1).astype(np.float32), format="fltp",
                                            layout="stereo")
            af.sample_rate, af.pts, af.time_base = 48000, k * 1024, Fraction(1, 48000)
            out.mux(a.encode(af))
        out.mux(a.encode(None))
    return path


def load_model(name: str):
    import torch

    import hrx

    if name == "hrx-t":
        torch.manual_seed(0)
        model = hrx.create_model("hrx-t", scale=2)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape) * 0.05)
        return model
    return hrx.load_model(name)


def raw_pipe(model, clip: Path, out: Path) -> float:
    """Real-ESRGAN-style: rgb24 frames in, one whole-frame PyTorch call each, rgb24 frames to the encoder."""
    import av
    import torch

    started = time.perf_counter()
    with av.open(str(clip)) as inp, av.open(str(out), "w") as dst:
        stream = None
        for frame in inp.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")  # what an ffmpeg raw pipe carries
            with torch.inference_mode():
                x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
                h, w = x.shape[2:]
                m, s = model.size_multiple, model.scale  # Real-ESRGAN's mod padding, reflected, cropped after
                x = torch.nn.functional.pad(x, (0, -w % m, 0, -h % m), mode="reflect")
                y = model(x)[0, :, :h * s, :w * s].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
            if stream is None:
                stream = dst.add_stream("libx264", rate=24)
                stream.width, stream.height, stream.pix_fmt = y.shape[1], y.shape[0], "yuv420p"
                stream.options = {"crf": "18"}
            dst.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(y), format="rgb24")))
        dst.mux(stream.encode(None))
    return time.perf_counter() - started


def phases(backend, spec, clip: Path, options) -> dict[str, float]:
    """Decode, inference and encode of the hrx path, each alone over the whole clip (seconds)."""
    import av

    from hrx.runtime.video import FrameUpscaler, decode_segment, open_encoder, probe
    from hrx.runtime.video.color import from_rgb

    plan = probe(clip, options, backend.info.scale)
    t0 = time.perf_counter()
    frames = [item for segment in plan.segments for item in decode_segment(plan, segment)]
    t1 = time.perf_counter()
    model = FrameUpscaler(backend, spec, plan)
    outputs = [(pts, model(rgb)) for pts, rgb in frames]
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, av.open(str(Path(tmp) / "enc.mkv"), "w") as dst:
        stream = open_encoder(dst, plan, options)
        for pts, rgb in outputs:
            frame = from_rgb(rgb, plan.pix_fmt, plan.out_color)
            frame.pts, frame.time_base = pts, plan.time_base
            dst.mux(stream.encode(frame))
        dst.mux(stream.encode(None))
    t3 = time.perf_counter()
    return {"decode": t1 - t0, "inference": t2 - t1, "encode": t3 - t2}


def peak_rss(args, frames: int) -> float:
    """Max RSS (MB) of a fresh process that makes a ``frames``-frame clip and upscales it with hrx."""
    import subprocess

    cmd = [sys.executable, __file__, "--child-rss", str(frames), "--size", args.size, "--model", args.model,
           "--tile", str(args.tile), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def child_rss(args, width: int, height: int) -> None:
    import resource

    from hrx.runtime.tiling import TileSpec
    from hrx.runtime.torch_backend import TorchBackend
    from hrx.runtime.video import VideoOptions, upscale_video

    backend = TorchBackend(load_model(args.model), tile=args.tile)
    i = backend.info
    spec = TileSpec(i.tile, i.tile_overlap, i.scale, i.size_multiple, i.batch, "blend")
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip.mp4", width, height, args.child_rss)
        upscale_video(backend, spec, clip, Path(tmp) / "out.mp4", VideoOptions(codec="libx264", crf=18))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--model", default="hrx-t", help="bundled name or checkpoint (hrx-t: perturbed hrx-t x2)")
    parser.add_argument("--tile", type=int, default=0, help="hrx tile (0: the whole frame)")
    parser.add_argument("--threads", type=int, default=0, help="PyTorch threads (0: its default)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child-rss", type=int, default=0, help=argparse.SUPPRESS)  # one hrx run, prints max RSS
    args = parser.parse_args()
    width, height = map(int, args.size.lower().split("x"))

    import torch

    from hrx.runtime.tiling import TileSpec
    from hrx.runtime.torch_backend import TorchBackend
    from hrx.runtime.video import VideoOptions, upscale_video

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tile == 0:
        args.tile = max(width, height)  # rounded up to the model's size multiple by TorchBackend
    if args.child_rss:
        child_rss(args, width, height)
        return
    model = load_model(args.model)
    backend = TorchBackend(model, tile=args.tile)
    i = backend.info
    spec = TileSpec(i.tile, i.tile_overlap, i.scale, i.size_multiple, i.batch, "blend")
    options = VideoOptions(codec="libx264", crf=18)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = make_clip(tmp / "clip.mp4", width, height, args.frames)
        deploy = backend.model  # the fused deploy copy both sides run
        hrx_s = raw_s = float("inf")
        for _ in range(max(1, args.rounds)):
            hrx_s = min(hrx_s, upscale_video(backend, spec, clip, tmp / "hrx.mp4", options).seconds)
            raw_s = min(raw_s, raw_pipe(deploy, clip, tmp / "raw.mp4"))
        parts = phases(backend, spec, clip, options)
    total = sum(parts.values())
    rss = {n: peak_rss(args, n) for n in (args.frames, 4 * args.frames)}
    rows = [{"pipeline": "hrx upscale (threads, float path, timestamps, audio copied)", "seconds": round(hrx_s, 3),
             "fps": round(args.frames / hrx_s, 3)},
            {"pipeline": "raw pipe (rgb24, one whole-frame PyTorch call per frame, sequential)",
             "seconds": round(raw_s, 3), "fps": round(args.frames / raw_s, 3)}]
    rows += [{"phase": k, "seconds": round(v, 3), "share": round(v / total, 4)} for k, v in parts.items()]
    rows += [{"frames": n, "peak_rss_mb": round(mb, 1)} for n, mb in rss.items()]
    print(f"{args.frames} frames {width}x{height} -> x{i.scale}, model {args.model}, tile {spec.tile}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'pipeline':72s} {'s':>8s} {'fps':>8s}")
    for r in rows[:2]:
        print(f"{r['pipeline']:72s} {r['seconds']:8.2f} {r['fps']:8.3f}")
    print(f"hrx / raw pipe fps: {raw_s / hrx_s:.2f}x")
    print("hrx path, each part alone: " + ", ".join(f"{k} {v:.2f} s ({v / total:.0%})" for k, v in parts.items()))
    print("hrx peak RSS: " + ", ".join(f"{n} frames {mb:.0f} MB" for n, mb in rss.items()))
    from results import save

    save("bench_video", rows, params=vars(args))


if __name__ == "__main__":
    main()
