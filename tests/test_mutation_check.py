"""scripts/mutation_check.py's mutations still apply to the source: each patch's "before" text is found
exactly once in its file (the code moved on: update the mutation), its "after" differs, names are unique,
and every test file it runs exists. The check itself runs on demand (minutes), not here."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("mutation_check", ROOT / "scripts" / "mutation_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_mutation_applies_once_to_the_current_source():
    mutations = _script().MUTATIONS
    assert len(mutations) >= 25
    assert len({m.name for m in mutations}) == len(mutations)
    drifted = [f"{m.name}: {m.path} holds 'before' {(ROOT / m.path).read_text().count(m.before)} times"
               for m in mutations if (ROOT / m.path).read_text().count(m.before) != 1]
    assert not drifted, drifted
    for m in mutations:
        assert m.apply((ROOT / m.path).read_text()) != (ROOT / m.path).read_text(), m.name
        files = [t.split("::")[0] for t in m.tests if t.startswith("tests/")]
        assert files and all((ROOT / f).is_file() for f in files), m.name
