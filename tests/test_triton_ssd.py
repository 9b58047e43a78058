"""Triton non-causal SSD (kernels/triton_ssd.py) against the float64 sequential reference.

The kernels run on CUDA, or on the CPU under ``TRITON_INTERPRET=1`` (which must be set before triton is imported):
without CUDA, ``test_cpu_under_triton_interpreter`` re-runs this file in a subprocess with the variable set."""
import os
import subprocess
import sys

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if CUDA else ("cpu" if INTERPRET else None)
kernel_test = pytest.mark.skipif(DEVICE is None, reason="needs CUDA or TRITON_INTERPRET=1 (see the subprocess test)")


def make_inputs(batch, length, heads, dim, groups, n, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    t = dict(x=torch.randn(batch, length, heads, dim, generator=g), dt=torch.randn(batch, length, heads, generator=g),
             A=torch.rand(heads, generator=g) + 0.1, B=torch.randn(batch, length, groups, n, generator=g),
             C=torch.randn(batch, length, groups, n, generator=g), D=torch.randn(heads, generator=g),
             dt_bias=torch.randn(heads, generator=g))
    return {k: v.to(device=DEVICE, dtype=dtype if v.dim() > 1 else torch.float32) for k, v in t.items()}


def rel_err(out, ref):
    assert torch.isfinite(out).all()
    return ((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-3)).item()


@kernel_test
@pytest.mark.parametrize("shape", [(2, 37, 4, 3, 2, 5), (1, 1, 2, 16, 1, 16), (1, 70, 6, 20, 3, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_noncausal_forward_and_backward_match_reference(shape, dtype):
    """Through the custom op (opaque backward op) against autograd of the float64 reference."""
    from vssm.kernels.ssd_reference import ssd_noncausal_reference
    inputs = make_inputs(*shape, dtype=dtype)
    ref_in = {k: v.detach().double().requires_grad_(True) for k, v in inputs.items()}
    ref = ssd_noncausal_reference(*ref_in.values(), True)
    grad_y = torch.randn(ref.shape, device=DEVICE).to(dtype).double()  # representable in dtype
    ref_grads = torch.autograd.grad(ref, list(ref_in.values()), grad_y)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y = torch.ops.vssm.ssd(*leaves.values(), True, "noncausal", 1, "triton")
    assert y.dtype == dtype and y.shape == ref.shape
    grads = torch.autograd.grad(y, list(leaves.values()), grad_y.to(dtype))
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert rel_err(y.detach(), ref.detach()) < tol
    for name, g, r in zip(inputs, grads, ref_grads):
        assert g.dtype == inputs[name].dtype
        assert rel_err(g, r) < (tol if dtype == torch.float32 else 5e-2), name


@pytest.mark.skipif(CUDA or INTERPRET, reason="runs the kernel tests under the interpreter when there is no CUDA")
def test_cpu_under_triton_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__, "-k",
                           "not test_cpu_under_triton_interpreter"], cwd=here, env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "7 passed" in proc.stdout, proc.stdout[-2000:]  # 6 kernel cases + the backend choice


def test_triton_is_the_cuda_choice():
    from vssm import kernels
    from vssm.kernels.ssd import resolve_ssd_backend
    assert "triton" in kernels.list_ssd_backends("noncausal")
    assert resolve_ssd_backend("noncausal", "auto", torch.device("cuda")) == "triton"
    assert resolve_ssd_backend("noncausal", "auto", torch.device("cpu")) == "chunked"
    for backend in ("auto", "triton"):  # float64 resolves to the PyTorch backend (float64 state)
        assert resolve_ssd_backend("noncausal", backend, torch.device("cuda"), torch.float64) == "chunked"
    with pytest.raises(ValueError, match="runs on cuda tensors"):
        kernels.ssd_noncausal(**{k: v.cpu() for k, v in make_inputs_cpu().items()}, backend="triton")


def make_inputs_cpu():
    t = dict(x=torch.randn(1, 4, 2, 2), dt=torch.randn(1, 4, 2), A=torch.rand(2), B=torch.randn(1, 4, 1, 2),
             C=torch.randn(1, 4, 1, 2), D=torch.randn(2), dt_bias=torch.randn(2))
    return t
