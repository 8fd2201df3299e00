"""Public functions carry docstrings: at least 90% of them in the installed package (hrx/, export/,
calibration/, runtime/, cli/). Public: a function or method whose name, and every enclosing class's
name, does not start with ``_``; functions nested in functions do not count.

``python tests/test_docstrings.py`` prints the figure and the files with the most undocumented ones."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ("hrx", "export", "calibration", "runtime", "cli")
MIN_SHARE = 0.90


def public_functions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The public functions and methods of a module (see the module doc)."""
    found = []

    def walk(node: ast.AST, private: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                walk(child, private or child.name.startswith("_"))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not private and not child.name.startswith("_"):
                    found.append(child)

    walk(tree, False)
    return found


def coverage() -> dict[str, tuple[int, int]]:
    """``{file: (documented, public)}`` over the package."""
    counts = {}
    for folder in PACKAGE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            functions = public_functions(ast.parse(path.read_text(encoding="utf-8")))
            documented = sum(ast.get_docstring(f) is not None for f in functions)
            counts[str(path.relative_to(ROOT))] = (documented, len(functions))
    return counts


def test_public_functions_are_documented():
    counts = coverage()
    documented = sum(d for d, _ in counts.values())
    total = sum(t for _, t in counts.values())
    assert total > 400  # the walk found the package
    worst = sorted(counts.items(), key=lambda kv: kv[1][0] - kv[1][1])[:5]
    assert documented / total >= MIN_SHARE, (f"{documented}/{total} public functions documented; most missing in "
                                             + ", ".join(f"{f} ({t - d})" for f, (d, t) in worst))


if __name__ == "__main__":
    counts = coverage()
    documented, total = sum(d for d, _ in counts.values()), sum(t for _, t in counts.values())
    print(f"{documented}/{total} public functions documented ({documented / total:.1%})")
    for name, (d, t) in sorted(counts.items(), key=lambda kv: kv[1][0] - kv[1][1]):
        if t > d:
            print(f"  {t - d:3d} undocumented  {name}")
