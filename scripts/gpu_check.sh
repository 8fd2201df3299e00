#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one command, with one summary table at the end.
#
#   bash scripts/gpu_check.sh            # uses .venv (scripts/setup.sh) or $PYTHON
#
# Steps (each under its own time limit; the whole script is sized for < 8 minutes on one GPU):
#   1. Triton kernel tests on the GPU (tests/test_trt_kernels.py) and their speed vs PyTorch
#   2. the FP16 ONNX (hrx export --precision fp16) on ONNX Runtime CUDA vs the FP32 PyTorch model
#   3. torch eager (unfused) vs the fused model on CUDA: max difference and speed
#   4. where TensorRT is installed: hrx build of the FP16 export (strongly typed) and hrx verify --backends trt
#   5. where TensorRT is installed: tests/test_trt_backend.py (perturbed hrx-t and the bundled default-x2,
#      native and plugin graphs, FP32 / FP16 / INT8 Q/DQ engines against ONNX Runtime, never bicubic);
#      the FP16 file through the backends hrx upscale opens (hrx verify --backends upscale:trt,...);
#      a plugin-op export (hrx::SelectiveScan / hrx::MoETop1 as TensorRT plugins) upscaled end to end with
#      hrx upscale --backend trt and compared with ONNX Runtime CPU by PSNR (scripts/compare_images.py)
# A step whose requirement is missing (no onnxruntime-gpu, no TensorRT) is SKIP with the reason;
# the script exits 1 if any step FAILs. Logs stay in $HRX_GPU_CHECK_DIR (default: a temp folder).
#
# Not run by the project's CI (no GPU there); written and dry-run on a CPU-only machine, where every
# step reports SKIP or FAIL with its reason.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
PY="${PYTHON:-$root/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
HRX=("$PY" -m hrx.cli.main)
work="${HRX_GPU_CHECK_DIR:-$(mktemp -d -t hrx-gpu-check.XXXXXX)}"
mkdir -p "$work"
rows=()
failed=0

row() {  # name status seconds figure
  rows+=("$(printf '%-34s %-5s %6s  %s' "$1" "$2" "$3" "$4")")
  [ "$2" = "FAIL" ] && failed=1
  printf '[gpu_check] %-34s %s %ss %s\n' "$1" "$2" "$3" "$4" >&2
}

run_step() {  # name limit_seconds log_file command...
  local name="$1" limit="$2" log="$3"; shift 3
  local start end rc
  start=$(date +%s)
  timeout "$limit" "$@" >"$log" 2>&1
  rc=$?
  end=$(date +%s)
  STEP_SECONDS=$((end - start))
  [ $rc -eq 124 ] && echo "timed out after ${limit}s" >>"$log"
  return $rc
}

last_line() { grep -v '^\s*$' "$1" | tail -n 1 | cut -c1-90; }

# --- 0. the machine ----------------------------------------------------------------------------------
"$PY" - >"$work/env.txt" 2>&1 <<'EOF'
import importlib.util, torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
for m in ("triton", "onnxruntime", "tensorrt"):
    print(m, "present" if importlib.util.find_spec(m) else "missing")
import onnxruntime as ort
print("ort providers", ort.get_available_providers())
EOF
cuda=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
gpu=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null || echo "no CUDA GPU")
ort_cuda=$("$PY" -c 'import onnxruntime as o; print(int("CUDAExecutionProvider" in o.get_available_providers()))' 2>/dev/null || echo 0)
trt=$("$PY" -c 'import importlib.util as u; print(int(u.find_spec("tensorrt") is not None))' 2>/dev/null || echo 0)
row "machine" "INFO" 0 "$gpu; ORT CUDA=$ort_cuda; TensorRT=$trt"
if [ "$cuda" != "1" ]; then
  row "CUDA" "FAIL" 0 "torch.cuda.is_available() is False: install a CUDA build of PyTorch"
fi

# --- 1. Triton kernels -------------------------------------------------------------------------------
if [ "$cuda" = "1" ]; then
  if run_step kernels 180 "$work/kernels.txt" "$PY" -m pytest -q -p no:cacheprovider tests/test_trt_kernels.py; then
    row "Triton kernel tests (GPU)" "PASS" "$STEP_SECONDS" "$(last_line "$work/kernels.txt")"
  else
    row "Triton kernel tests (GPU)" "FAIL" "$STEP_SECONDS" "$(last_line "$work/kernels.txt")"
  fi
  if run_step kspeed 120 "$work/kspeed.txt" "$PY" benchmarks/bench_trt_kernels.py; then
    row "Triton kernel speed" "PASS" "$STEP_SECONDS" "$(last_line "$work/kspeed.txt")"
  else
    row "Triton kernel speed" "FAIL" "$STEP_SECONDS" "$(last_line "$work/kspeed.txt")"
  fi
else
  row "Triton kernel tests (GPU)" "SKIP" 0 "no CUDA"
fi

# --- 2. FP16 ONNX on ONNX Runtime CUDA --------------------------------------------------------------
fp16="$work/default-x2.fp16.onnx"
if run_step export16 240 "$work/export16.txt" "${HRX[@]}" export default-x2 --tile 128 --precision fp16 -o "$fp16"; then
  row "export --precision fp16 (x2, 128)" "PASS" "$STEP_SECONDS" "$(grep -o 'FP32 islands.*' "$work/export16.txt" | cut -c1-80)"
  if [ "$ort_cuda" = "1" ]; then
    if run_step ortcuda 180 "$work/ortcuda.txt" "${HRX[@]}" verify "$fp16" --checkpoint default-x2 --backends onnxrt; then
      row "FP16 ONNX on ORT CUDA vs PyTorch" "PASS" "$STEP_SECONDS" "$(grep onnxrt-cuda "$work/ortcuda.txt" | grep -o 'PSNR=[^ ]* dB')"
    else
      row "FP16 ONNX on ORT CUDA vs PyTorch" "FAIL" "$STEP_SECONDS" "$(grep -E 'onnxrt-cuda|error' "$work/ortcuda.txt" | tail -n 1 | cut -c1-90)"
    fi
  else
    row "FP16 ONNX on ORT CUDA vs PyTorch" "SKIP" 0 "no CUDAExecutionProvider (pip install 'hrx[gpu]')"
  fi
else
  row "export --precision fp16 (x2, 128)" "FAIL" "$STEP_SECONDS" "$(last_line "$work/export16.txt")"
fi

# --- 3. torch eager vs fused on CUDA -----------------------------------------------------------------
if [ "$cuda" = "1" ]; then
  if run_step fused 120 "$work/fused.txt" "$PY" - <<'EOF'
import time, torch, hrx
model = hrx.load_model("default-x4").cuda().eval()
fused = hrx.fuse(hrx.load_model("default-x4")).cuda().eval()
x = torch.rand(4, 3, 128, 128, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
def bench(m):
    with torch.no_grad():
        for _ in range(3):
            m(x)
        torch.cuda.synchronize(); t = time.perf_counter()
        for _ in range(10):
            y = m(x)
        torch.cuda.synchronize()
    return y, (time.perf_counter() - t) / 10
a, ta = bench(model)
b, tb = bench(fused)
err = (a - b).abs().max().item()
print(f"max|eager-fused|={err:.2e} eager {ta*1e3:.1f} ms fused {tb*1e3:.1f} ms ({ta/tb:.2f}x)")
assert err < 1e-3, err
EOF
  then
    row "torch eager vs fused (CUDA, x4)" "PASS" "$STEP_SECONDS" "$(last_line "$work/fused.txt")"
  else
    row "torch eager vs fused (CUDA, x4)" "FAIL" "$STEP_SECONDS" "$(last_line "$work/fused.txt")"
  fi
else
  row "torch eager vs fused (CUDA, x4)" "SKIP" 0 "no CUDA"
fi

# --- 4. TensorRT ----------------------------------------------------------------------------------------
if [ "$trt" = "1" ] && [ "$cuda" = "1" ]; then
  # the FP16 export of step 2 built as it is (strongly typed: its Casts decide); the FP32 -> FP16 conversion
  # inside the build is covered by tests/test_trt_backend.py in step 5
  if [ -f "$fp16" ] && run_step build 300 "$work/build.txt" "${HRX[@]}" build "$fp16" -o "$work/default-x2.fp16.engine"; then
    row "hrx build (FP16 export)" "PASS" "$STEP_SECONDS" "$(grep -o 'layer precisions.*' "$work/build.txt" | cut -c1-80)"
    if run_step trtverify 180 "$work/trtverify.txt" "${HRX[@]}" verify "$fp16" --checkpoint default-x2 --backends trt; then
      row "hrx verify --backends trt (fp16)" "PASS" "$STEP_SECONDS" "$(grep -o 'PSNR=[^ ]* dB' "$work/trtverify.txt" | head -n 1)"
    else
      row "hrx verify --backends trt (fp16)" "FAIL" "$STEP_SECONDS" "$(last_line "$work/trtverify.txt")"
    fi
  else
    row "hrx build (FP16 export)" "FAIL" "$STEP_SECONDS" "$(last_line "$work/build.txt" 2>/dev/null || echo "no FP16 export from step 2")"
  fi
else
  row "hrx build + verify trt" "SKIP" 0 "TensorRT not installed (pip install 'hrx[tensorrt]') or no CUDA"
fi

# --- 5. TensorRT tests, the upscale backends, a plugin-op engine end to end ------------------------
if [ "$trt" = "1" ] && [ "$cuda" = "1" ]; then
  if run_step trttests 300 "$work/trttests.txt" "$PY" -m pytest -q -p no:cacheprovider tests/test_trt_backend.py; then
    row "TensorRT tests (native/plugin x3)" "PASS" "$STEP_SECONDS" "$(last_line "$work/trttests.txt")"
  else
    row "TensorRT tests (native/plugin x3)" "FAIL" "$STEP_SECONDS" "$(grep -E 'FAILED|Error' "$work/trttests.txt" | head -n 1 | cut -c1-90)"
  fi
  if [ -f "$fp16" ]; then
    backends="upscale:trt"
    [ "$ort_cuda" = "1" ] && backends="$backends,upscale:onnxrt-cuda"
    if run_step upverify 240 "$work/upverify.txt" "${HRX[@]}" verify "$fp16" --checkpoint default-x2 --backends "$backends"; then
      row "FP16 file via hrx upscale backends" "PASS" "$STEP_SECONDS" "$(grep -o 'upscale:[^ ]* .*PSNR=[^ ]* dB' "$work/upverify.txt" | sed 's/ .*PSNR=/ /' | tr '\n' ' ')"
    else
      row "FP16 file via hrx upscale backends" "FAIL" "$STEP_SECONDS" "$(grep -E 'FAIL|error' "$work/upverify.txt" | head -n 1 | cut -c1-90)"
    fi
  fi
  plugin="$work/default-x2.plugin.onnx"
  mkdir -p "$work/in"
  "$PY" - "$work/in" >"$work/photo.txt" 2>&1 <<'EOF'
import sys
import numpy as np
import skimage.data as data
from PIL import Image
for name in ("astronaut", "chelsea"):
    img = np.asarray(getattr(data, name)())[..., :3]
    Image.fromarray(img[100:260, 120:300]).save(f"{sys.argv[1]}/{name}.png")
EOF
  if run_step exportp 240 "$work/exportp.txt" "${HRX[@]}" export default-x2 --tile 64 --ops plugin -o "$plugin" &&
     run_step uptrt 300 "$work/uptrt.txt" "${HRX[@]}" upscale "$work/in" -o "$work/out-trt" --engine "$plugin" --backend trt &&
     run_step upcpu 240 "$work/upcpu.txt" "${HRX[@]}" upscale "$work/in" -o "$work/out-cpu" --engine "$plugin" --backend onnxrt-cpu; then
    if run_step psnr 60 "$work/psnr.txt" "$PY" scripts/compare_images.py "$work/out-trt" "$work/out-cpu" --min-psnr 40; then
      row "upscale --backend trt (plugins) vs CPU" "PASS" "$STEP_SECONDS" "$(last_line "$work/psnr.txt")"
    else
      row "upscale --backend trt (plugins) vs CPU" "FAIL" "$STEP_SECONDS" "$(last_line "$work/psnr.txt")"
    fi
  else
    row "upscale --backend trt (plugins) vs CPU" "FAIL" "$STEP_SECONDS" "$(cat "$work/exportp.txt" "$work/uptrt.txt" "$work/upcpu.txt" 2>/dev/null | grep -E 'error|Error' | head -n 1 | cut -c1-90)"
  fi
else
  row "TensorRT tests / upscale --backend trt" "SKIP" 0 "TensorRT not installed (pip install 'hrx[tensorrt]') or no CUDA"
fi

echo
printf '%-34s %-5s %6s  %s\n' "step" "state" "sec" "result"
printf '%s\n' "----------------------------------------------------------------------------------------------"
printf '%s\n' "${rows[@]}"
echo "logs: $work"
exit $failed
