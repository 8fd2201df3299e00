"""The plugin kernels (Triton) against the PyTorch references.

On a CUDA device the kernels run for real. Without one, the same comparisons run under Triton's
CPU interpreter (``TRITON_INTERPRET=1``) and the AOT compilation to PTX is checked. Triton is a
test dependency (the ``test`` extra, installed by scripts/setup.sh --test), so only the real-GPU tests skip.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import scan_inputs
from hrx.errors import HRXError
from hrx.runtime.trt import kernels

HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (the kernels run on the GPU)")

# (b, L, H, P, N, chunk): L not a multiple of the chunk, P and N below the 16 of tl.dot, several P blocks
SCAN_CASES = [(2, 50, 2, 16, 8, 32), (1, 37, 3, 12, 5, 16), (4, 64, 4, 8, 4, 16), (1, 300, 2, 80, 16, 64)]


def test_scan_block_sizes_meet_tl_dot():
    blocks = kernels.scan_blocks(P=8, N=4, chunk=16)
    assert (blocks.T, blocks.BLOCK_N, blocks.BLOCK_P) == (16, 16, 16)
    blocks = kernels.scan_blocks(P=80, N=24, chunk=256)
    assert (blocks.T, blocks.BLOCK_N, blocks.BLOCK_P) == (64, 32, 64)


PTX = textwrap.dedent("""\
    .visible .entry k(
    \t.param .u64 .ptr .global .align 1 k_param_0,
    \t.param .u64 .ptr .global .align 1 k_param_1,
    \t.param .u64 .ptr .global .align 1 k_param_2,
    \t.param .u64 .ptr .global .align 1 k_param_3
    )
    {
    \tld.param.b64 \t%rd1, [k_param_0];
    \tld.param.b64 \t%rd2, [k_param_1];
    }
    """)


def test_trim_entry_params_drops_unused_scratch_pointers():
    out = kernels.trim_entry_params(PTX, "k", 2)
    assert "k_param_2" not in out and "k_param_3" not in out
    assert "k_param_1\n)" in out and "k_param_0," in out
    assert kernels.trim_entry_params(out, "k", 2) == out  # already minimal
    with pytest.raises(HRXError, match="uses its extra parameter"):
        kernels.trim_entry_params(PTX, "k", 1)
    with pytest.raises(HRXError, match="no such .entry"):
        kernels.trim_entry_params(PTX, "other", 1)


def test_kernels_refuse_cpu_tensors():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter runs on CPU tensors")
    x, dt, A, B, C, D = scan_inputs(1, 8, 1, 4, 2)
    with pytest.raises(HRXError, match="CUDA tensors"):
        kernels.selective_scan(x, dt, A, B, C, D, 16)


def test_shape_mismatch_is_a_clear_error():
    x, dt, A, B, C, D = scan_inputs(1, 8, 2, 4, 2)
    with pytest.raises(HRXError, match="inconsistent shapes"):
        kernels.selective_scan_into(x, dt[..., :4], A, B, C, D, out=torch.empty_like(x))
    with pytest.raises(HRXError, match="want x"):
        kernels.selective_scan_into(x.flatten(1, 2), dt, A, B, C, D, out=torch.empty_like(x))
    with pytest.raises(HRXError, match="do not match"):
        kernels.moe_top1_into(torch.zeros(1, 4, 2, 2), torch.zeros(1, 3, 5, 2, 2), out=torch.zeros(1, 5, 2, 2))


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("case", SCAN_CASES)
def test_selective_scan_matches_reference_fp32(case):
    from hrx.blocks.ssm import selective_scan_ref

    b, L, H, P, N, chunk = case
    args = scan_inputs(b, L, H, P, N, "cuda")
    got = kernels.selective_scan(*args, chunk)
    want = selective_scan_ref(*args)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


@needs_cuda
@pytest.mark.gpu
def test_selective_scan_fp16_io_computes_in_fp32():
    from hrx.blocks.ssm import selective_scan_ref

    x, dt, A, B, C, D = scan_inputs(2, 100, 2, 16, 8, "cuda")
    x16, B16, C16 = x.half(), B.half(), C.half()
    got = kernels.selective_scan(x16, dt, A, B16, C16, D, 32)
    assert got.dtype == torch.float16
    want = selective_scan_ref(x16.float(), dt, A, B16.float(), C16.float(), D)
    torch.testing.assert_close(got.float(), want, rtol=2e-3, atol=2e-3 * want.abs().max().item())


@needs_cuda
@pytest.mark.gpu
def test_selective_scan_writes_into_a_strided_output():
    from hrx.blocks.ssm import selective_scan_ref

    args = scan_inputs(1, 40, 2, 16, 8, "cuda")
    out = torch.empty(1, 40, 2, 16, device="cuda").permute(0, 2, 3, 1)  # [1, 2, 16, 40], not contiguous
    kernels.selective_scan_into(*args, out=out, chunk=16)
    torch.testing.assert_close(out, selective_scan_ref(*args), rtol=1e-4, atol=1e-3)


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_moe_top1_matches_reference(dtype):
    from hrx.blocks.moe import top1_combine

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 33, 17, generator=g)
    logits[0, :, 0, 0] = 1.5  # a four-way tie: the lowest index wins
    logits[1, 2:, 3, 3] = 7.0
    experts = torch.randn(2, 4, 5, 33, 17, generator=g).to(dtype)
    got = kernels.moe_top1(logits.cuda(), experts.cuda())
    assert got.dtype == dtype
    want = top1_combine(logits, experts)
    tol = 1e-6 if dtype == torch.float32 else 1e-3
    torch.testing.assert_close(got.cpu().float(), want.float(), rtol=tol, atol=tol)


@needs_cuda
@pytest.mark.gpu
def test_ssmixer_through_the_triton_scan():
    from hrx.blocks.ssm import SSMixer, use_scan_impl

    kernels.register_torch_impls()
    mixer = SSMixer(32, d_state=8, head_dim=16, chunk=16).cuda().eval()
    x = torch.randn(2, 32, 12, 10, device="cuda")
    with torch.no_grad():
        want = use_scan_impl(mixer, "reference")(x)
        got = use_scan_impl(mixer, "triton")(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


INTERPRETED = """
import torch
from hrx.runtime.trt import kernels
from hrx.blocks.ssm import selective_scan_ref
from hrx.blocks.moe import top1_combine
torch.manual_seed(0)
for (b, L, H, P, N, chunk) in [(2, 50, 2, 16, 8, 32), (1, 37, 3, 12, 5, 16)]:
    x = torch.randn(b, H, P, L); dt = torch.nn.functional.softplus(torch.randn(b, H, L)) * 0.5
    A = -(torch.rand(H) * 3 + 0.1); B = torch.randn(b, N, L); C = torch.randn(b, N, L); D = torch.randn(H)
    want = selective_scan_ref(x, dt, A, B, C, D)
    torch.testing.assert_close(kernels.selective_scan(x, dt, A, B, C, D, chunk), want, rtol=1e-4,
                               atol=1e-4 * want.abs().max().item())
logits = torch.randn(2, 4, 5, 7); logits[0, :, 0, 0] = 1.0
experts = torch.randn(2, 4, 3, 5, 7)
torch.testing.assert_close(kernels.moe_top1(logits, experts), top1_combine(logits, experts))
print("ok")
"""


@pytest.mark.skipif(HAS_CUDA, reason="the GPU tests run the kernels for real")
def test_kernels_match_reference_in_the_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


def test_aot_compilation_gives_tensorrt_a_kernel_with_its_own_arguments():
    """The PTX TensorRT's AOT plugins embed: entry parameters = input pointers + output pointer only."""
    import re

    for k, n_params in ((kernels.compile_selective_scan((4, 4, 8, 64), 4, 16, "fp16", compute_capability="8.0"), 7),
                        (kernels.compile_moe_top1((1, 4, 16, 32, 32), "fp32", "fp16", compute_capability="8.0"), 3)):
        entry = re.search(r"\.entry\s+" + k.name + r"\s*\((.*?)\)", k.ptx, re.S).group(1)
        assert len([p for p in entry.split(",") if p.strip()]) == n_params
        assert k.num_warps == 4 and k.grid[0] > 0
