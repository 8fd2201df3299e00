"""Docs that stay true: the example commands marked ``<!-- doc-test -->`` in README.md and docs/*.md run as
written (in a temporary folder with a few small photos), and every relative link and anchor points at
something that exists.

Convention: a fenced ```bash block directly after a ``<!-- doc-test -->`` line is run with ``bash -euo
pipefail``. README.md's block runs first (it makes ``tiny.pt``, ``tiny.onnx``, ``tiny.int8.onnx`` from
an untrained hrx-t model); every other block runs in a copy of the folder it left. Mark only cheap
blocks (tiny models, small tiles).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "RESULTS.md",
               *(ROOT / "docs").glob("*.md")])
MARK = re.compile(r"^<!-- doc-test -->\n```bash\n(.*?)^```", re.M | re.S)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def doc_blocks() -> list[tuple[str, str]]:
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in MARK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append((f"{path.relative_to(ROOT)}:{line}", m.group(1)))
    return out


BLOCKS = doc_blocks()


def run_block(code: str, cwd: Path, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "HRX_CACHE_DIR": str(cache), "PYTHONPATH": ""}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def write_photos(folder: Path) -> None:
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:64]
    for i in range(4):  # smooth gradients and stripes with noise: something to upscale, not a flat field
        rgb = np.stack([np.sin(x / (3 + i)), np.cos(y / (4 + i)), np.sin((x + y) / (5 + i))], -1) * 0.5 + 0.5
        img = np.clip(rgb * 255 + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"photo{i}.png")


@pytest.fixture(scope="module")
def readme_dir(tmp_path_factory):
    """The folder README.md's doc-test block leaves behind (it must run, and write what it says)."""
    readme = [code for where, code in BLOCKS if where.startswith("README.md:")]
    assert len(readme) == 1, "README.md needs exactly one <!-- doc-test --> block (the everyday commands)"
    work = tmp_path_factory.mktemp("readme")
    write_photos(work / "photos")
    done = run_block(readme[0], work, tmp_path_factory.mktemp("cache"))
    assert done.returncode == 0, f"README.md's doc-test block failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return work


@pytest.mark.slow
def test_readme_block_writes_what_it_says(readme_dir):
    from PIL import Image

    for name in ("tiny.pt", "tiny.onnx", "tiny.int8.onnx"):
        assert (readme_dir / name).is_file(), name
    for i in range(4):
        with Image.open(readme_dir / "out" / f"photo{i}.png") as im:
            assert im.size == (128, 96)  # x2


@pytest.mark.slow
@pytest.mark.parametrize("where,code", [b for b in BLOCKS if not b[0].startswith("README.md:")],
                         ids=[b[0] for b in BLOCKS if not b[0].startswith("README.md:")])
def test_doc_block_runs(where, code, readme_dir, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(readme_dir, work)
    done = run_block(code, work, tmp_path / "cache")
    assert done.returncode == 0, f"{where}: doc-test block failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lower case, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return LINK.findall(text)


def test_slug_follows_github():
    assert slug("Plugins: `hrx::SelectiveScan` and `hrx::MoETop1`") == "plugins-hrxselectivescan-and-hrxmoetop1"
    assert slug("Checking FP16 on the CPU: `fp16-ref`") == "checking-fp16-on-the-cpu-fp16-ref"
    assert slug("Install tiers (base, extras)") == "install-tiers-base-extras"


def test_links_and_anchors_resolve():
    broken = []
    for path in DOCS:
        for target in links(path):
            if re.match(r"^[a-z]+:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            where = f"{path.relative_to(ROOT)} -> {target}"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{where}: no heading with that anchor")
    assert not broken, "\n".join(broken)


def test_docs_speak_of_the_software_only():
    """No references to files outside the repository, no work-process words, no commit hashes as history."""
    bad = re.compile(r"shared/design|\bsession \d|\bs[23][ab]?\b|\bthe lead\b|\bhelpers?\b|\bengineers?\b"
                     r"|\bmain [0-9a-f]{7}\b|\bcommit [0-9a-f]{7,}\b", re.I)
    found = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:100]}" for p in DOCS if p.name != "RESULTS.md"
             for i, line in enumerate(p.read_text().splitlines(), 1) if bad.search(line)]
    assert not found, "\n".join(found)


def test_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200
