#!/usr/bin/env bash
# Set up (if needed) and run the test suite on the CPU. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh" --test
cd "$root"
exec .venv/bin/python -m pytest -q --durations=25 "$@"
