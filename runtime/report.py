"""The batch report as JSON lines (``hrx upscale --report FILE.jsonl``), written as the batch runs.

A first line names the run (``{"type": "run", "run": ID, "images": N, "videos": M}``: ID also tags the run's
temporary files), then one line per finished file: ``{"type": "image", "run": ..., "source": ...,
"status": ...}`` with the fields of :class:`~hrx.runtime.pipeline.ImageResult`, or ``{"type": "video", ...}``
with those of :class:`~hrx.runtime.video.VideoResult` (videos run first, then images); then one summary
line (``{"type": "summary", ...}``: the images' counts and settings, ``videos_done`` / ``videos_failed`` /
``videos_skipped`` when the run had videos, ``"interrupted": true`` when Ctrl-C ended the run). Each line
is written with one ``write`` on a file opened for appending and flushed to disk (fsync) before the next
file is reported: after a crash or a kill every line in the file is whole, valid JSON, and every image or
video it lists as ``done`` has its output on disk, whole. A report without a summary line is the report
of a run that did not finish.

Resuming: ``--skip-existing`` with the same ``--report`` appends to the file (a new ``run`` id); the
images and videos already written come back as ``skipped``, and the temporary files of the runs the
report shows unfinished (a killed writer's ``.NAME.RUNID.XXXXXXXX.tmp``) are removed. Without
``--skip-existing`` the file starts empty.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

from hrx.errors import HRXError
from hrx.paths import is_run_id


class ReportWriter:
    """Appends report lines to ``path`` (see the module doc); safe to call from several threads."""

    def __init__(self, path: str | os.PathLike, run_id: str, append: bool = False) -> None:
        self.path, self.run_id = Path(path), run_id
        self._lock = threading.Lock()
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if append else os.O_TRUNC)
        self._fd: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, flags, 0o666)
            if append:
                _drop_partial_line(self._fd, self.path)
        except BaseException as e:  # the file is closed again, whatever stopped the opening
            self.close()
            if isinstance(e, OSError):
                raise HRXError(f"{self.path}: cannot write the report ({e.strerror or e})") from e
            raise

    def start(self, images: int, videos: int = 0) -> None:
        """The run's first line: its id and how many images and videos it was given."""
        self._line({"type": "run", "run": self.run_id, "images": images, "videos": videos})

    def image(self, result: Any) -> None:
        """One finished image (an :class:`ImageResult`)."""
        self._line({"type": "image", "run": self.run_id, **dataclasses.asdict(result)})

    def video(self, result: Any) -> None:
        """One finished video (a :class:`VideoResult`): done, failed with its reason, or skipped."""
        self._line({"type": "video", "run": self.run_id, **dataclasses.asdict(result)})

    def summary(self, summary: dict) -> None:
        """The last line of a run: counts and settings without the per-file lists (the rows above hold
        them); the ``videos`` list becomes ``videos_done`` / ``videos_failed`` / ``videos_skipped``."""
        line = {k: v for k, v in summary.items() if k not in ("images", "videos")}
        videos = summary.get("videos")
        if videos:
            line.update({f"videos_{status}": sum(v["status"] == status for v in videos)
                         for status in ("done", "failed", "skipped")})
        self._line({"type": "summary", "run": self.run_id, **line})

    def _line(self, data: dict) -> None:
        line = (json.dumps(data) + "\n").encode()
        with self._lock:
            if self._fd is None:
                raise HRXError(f"{self.path}: the report is closed")
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)

    def close(self) -> None:
        """Close the report file; idempotent."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "ReportWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop_partial_line(fd: int, path: Path) -> None:
    """A report cut inside a line (a power loss between write and fsync) ends at its last whole line."""
    size = os.fstat(fd).st_size
    if size == 0:
        return
    with open(path, "rb") as f:
        data = f.read()
    if data.endswith(b"\n"):
        return
    os.truncate(path, data.rfind(b"\n") + 1)


def read_report(path: str | os.PathLike) -> list[dict]:
    """Every line of a JSON-lines report, parsed; one line naming the file and line when one is not JSON."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise HRXError(f"{path}: line {n} is not JSON ({e.msg})") from e
    return rows


def unfinished_runs(rows: list[dict]) -> list[str]:
    """Ids of the runs in a report that did not finish: no summary (killed, crashed) or an interrupted one."""
    started = [r["run"] for r in rows if r.get("type") == "run" and is_run_id(r.get("run"))]
    finished = {r.get("run") for r in rows if r.get("type") == "summary" and not r.get("interrupted")}
    return [run for run in dict.fromkeys(started) if run not in finished]


def open_report(path: Path, run_id: str, resume: bool, jobs: Sequence[Any], videos: int = 0) -> ReportWriter:
    """The ``--report`` writer, its first line counting the run's ``jobs`` (images) and ``videos``; resuming
    (``--skip-existing``) appends, and first removes the temporary files the unfinished runs of that report
    left beside this run's image outputs (a video resumes from its work folder instead)."""
    from hrx.paths import remove_temporaries

    writer = ReportWriter(path, run_id, append=resume)
    if resume:
        for run in unfinished_runs(read_report(path)):
            remove_temporaries([j.output for j in jobs], run)
    writer.start(len(jobs), videos)
    return writer


class ReportRows:
    """Every finished image and video, as it finishes: kept for an interrupted run's summary, and appended to
    the ``--report`` file (flushed to disk) when there is one."""

    def __init__(self, writer: ReportWriter | None) -> None:
        self.writer, self.results, self.videos, self.lock = writer, [], [], threading.Lock()

    def __call__(self, result: Any) -> None:
        with self.lock:
            self.results.append(result)
        if self.writer is not None:
            self.writer.image(result)

    def video(self, result: Any) -> None:
        """One finished video: kept, and its report line written."""
        with self.lock:
            self.videos.append(result)
        if self.writer is not None:
            self.writer.video(result)

    def finish(self, json_path: Path | None, backend: str = "", settings: dict | None = None,
               summary: dict | None = None, interrupted: bool = False, error: BaseException | None = None) -> None:
        """The summary line and ``--json``: the run's own summary, or (a run of videos only, or one that
        ended early) one built from the images and videos finished so far."""
        from hrx.runtime.pipeline import BatchReport

        if summary is None:
            with self.lock:
                summary = BatchReport(backend, list(self.results)).to_dict()
                if self.videos:
                    summary["videos"] = [r.to_dict() for r in self.videos]
            summary.update(settings or {})
            summary["interrupted"] = interrupted
            if error is not None and not interrupted:
                summary["error"] = str(error) if isinstance(error, HRXError) else type(error).__name__
        else:
            summary = dict(summary, interrupted=False)
        try:
            if self.writer is not None:
                self.writer.summary(summary)
        finally:
            if self.writer is not None:
                self.writer.close()
        if json_path is not None:
            write_json(json_path, summary)


def write_json(path: Path, data: dict) -> None:
    """``--json``: ``data`` indented, to stdout when ``path`` is ``-``, else written atomically."""
    text = json.dumps(data, indent=2) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        return
    from hrx.paths import atomic_write_bytes

    atomic_write_bytes(path, text.encode())
