#!/usr/bin/env bash
# Create .venv (once) and install hrx's base tier (no PyTorch: what `hrx upscale` with an .onnx or the
# bundled models needs) plus scikit-image's sample photos for scripts/demo.sh.
# `setup.sh --test` installs the full test stack (extra `test`: PyTorch and the export tools, training,
# calibration, Ray Data, the Triton client, PyAV, pytest, Triton's CPU interpreter), spandrel, and PyTriton's
# server in its own .venv-triton, and Debian's chromium (apt-get, when missing and run as root) for the
# browser tests of the HTML reports. A failed install stops the script.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mode="${1:-lean}"

# pip, quiet, with its one harmless editable-install notice filtered out; exits non-zero on failure
pip_install() {
  local py="$1"; shift
  local log; log="$(mktemp)"
  if ! "$py" -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
    rm -f "$log"
    echo "setup: pip install $* failed (see above)" >&2
    exit 1
  fi
  grep -v "is ignored: it is neither a file nor a directory" "$log" || true
  rm -f "$log"
}

# a venv whose python or pip is missing (e.g. an interrupted first run) is made anew
fresh_venv() {
  if ! "$1/bin/python" -m pip --version >/dev/null 2>&1; then
    rm -rf "$1"
    python3 -m venv "$1"
  fi
}

fresh_venv .venv
if [ "$mode" = "--test" ]; then
  # torch is pinned so pip takes the local CPU wheel instead of a multi-GB CUDA build; ray[data] and
  # tritonclient (extras ray, triton, part of test) add ~1 minute; their tests run in CI
  pip_install .venv/bin/python torch==2.13.0 -e ".[test]"
  # spandrel (third-party checkpoints) without its torchvision requirement: PyPI's torchvision for this
  # torch is a CUDA build whose C extension fails next to the CPU torch; hrx.spandrel_models imports spandrel
  # with a stand-in for the three torchvision names it uses (see docs/third-party-models.md).
  pip_install .venv/bin/python --no-deps "spandrel>=0.4.2,<0.5"
  # PyTriton bundles a real tritonserver (Python backend) but pins NumPy < 2, so it gets its own venv; the
  # Triton tests start scripts/pytriton_serve.py from it on loopback ports (~75 s to create, once)
  fresh_venv .venv-triton
  pip_install .venv-triton/bin/python nvidia-pytriton==0.7.0 "numpy<2" onnxruntime
  # the HTML reports are tested in headless Chromium driven by Playwright (extra test); Playwright's own
  # browser download is not used, Debian's chromium is
  if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
      apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
    else
      echo "setup: chromium is missing (apt-get install -y chromium as root); the browser tests will skip" >&2
    fi
  fi
else
  pip_install .venv/bin/python -e ".[data]"
fi
