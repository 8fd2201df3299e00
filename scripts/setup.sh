#!/usr/bin/env bash
# Create .venv (once) and install hrx with the lean CPU stack. Sourced by the other scripts.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# ray[data] and tritonclient (extras ray, triton) add ~1 minute here; their tests run in CI.
# torch is pinned so pip takes the local CPU wheel instead of a multi-GB CUDA build
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0 -e ".[test,ray,triton]" 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
# spandrel (third-party checkpoints) without its torchvision requirement: PyPI's torchvision for this
# torch is a CUDA build whose C extension fails next to the CPU torch; hrx.thirdparty imports spandrel
# with a stand-in for the three torchvision names it uses (see README "Third-party models").
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps "spandrel>=0.4.2,<0.5" 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
# PyTriton bundles a real tritonserver (Python backend) but pins NumPy < 2, so it gets its own venv; the
# Triton tests start scripts/pytriton_serve.py from it on loopback ports (~75 s to create, once)
if [ ! -x .venv-triton/bin/python ]; then
  python3 -m venv .venv-triton
fi
.venv-triton/bin/python -m pip install -q --disable-pip-version-check nvidia-pytriton==0.7.0 "numpy<2" \
  onnxruntime 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
