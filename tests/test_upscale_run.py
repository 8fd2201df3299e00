"""``hrx.runtime.upscale_run.run_upscale`` called from Python, without the CLI: a request built here, the
lines through the caller's view, the outcome's counts, the outputs and ``--json`` on disk."""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

import hrx
from hrx.runtime.upscale_run import UpscaleOutcome, UpscaleRequest, UpscaleView, run_upscale


class RecordingView(UpscaleView):
    """Keeps every line instead of printing it."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def echo(self, line: str) -> None:
        self.lines.append(line)


def test_run_upscale_from_python_counts_writes_and_reports(tmp_path):
    torch.manual_seed(0)
    ckpt = hrx.save_model(hrx.create_model("hrx-t", scale=2), tmp_path / "m.pt")
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(folder / "a.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    request = UpscaleRequest((folder,), out, model=str(ckpt), backend="torch", tile=32, batch=2,
                             json_path=tmp_path / "run.json")
    view = RecordingView()
    outcome = run_upscale(request, view)

    assert isinstance(outcome, UpscaleOutcome) and outcome.images == 2 and outcome.videos == []
    assert (outcome.summary["done"], outcome.summary["failed"], outcome.summary["skipped"]) == (1, 1, 0)
    assert [r.source for r in outcome.failed_images] == [str(folder / "broken.png")] and outcome.failed_videos == 0
    assert outcome.summary["model_scale"] == 2 and outcome.summary["tile"] == 32
    with Image.open(out / "a.png") as im:
        assert im.size == (60, 40)
    assert json.loads((tmp_path / "run.json").read_text()) == dict(outcome.summary, interrupted=False)
    assert any(line.startswith("backend: torch (") and "tile 32, batch 2" in line for line in view.lines)
    assert sum(line.startswith(f"error: {folder / 'broken.png'}") for line in view.lines) == 1
