"""Imports run one way: model (hrx/) -> export -> calibration / runtime -> cli. Read from the source
(every import statement, lazy ones inside functions included), so a cycle cannot creep back."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# repo folder -> the hrx sub-packages its modules must not import
FORBIDDEN = {
    "hrx": ("hrx.export", "hrx.calibration", "hrx.runtime", "hrx.cli"),
    "export": ("hrx.calibration", "hrx.runtime", "hrx.cli"),
    "calibration": ("hrx.cli",),
    "runtime": ("hrx.cli",),
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_imports_run_one_way(folder):
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for name in imported_modules(path):
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN[folder]):
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)
