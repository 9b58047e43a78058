"""Triton selective scan (kernels/triton_scan.py) against the sequential reference.

The kernel tests run where a Triton kernel can run: on CUDA (larger sizes, every dtype), or on the CPU under
``TRITON_INTERPRET=1`` (tiny sizes). The interpreter must be switched on before triton is imported, so on a
machine without CUDA ``test_cpu_under_triton_interpreter`` re-runs this file in a subprocess with the variable
set; in the parent process the kernel tests are skipped.
"""
import contextlib
import os
import subprocess
import sys

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CUDA = torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if CUDA else ("cpu" if INTERPRET else None)
kernel_test = pytest.mark.skipif(DEVICE is None,
                                 reason="needs CUDA or TRITON_INTERPRET=1 (see test_cpu_under_triton_interpreter)")
cuda_only = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def make_inputs(batch, groups, d, n, length, dtype=torch.float32, device="cpu"):
    channels = groups * d
    t = dict(
        u=torch.randn(batch, channels, length),
        delta=torch.randn(batch, channels, length) * 0.5,
        A=-torch.rand(channels, n) - 0.01,
        B=torch.randn(batch, groups, n, length),
        C=torch.randn(batch, groups, n, length),
        D=torch.randn(channels),
        delta_bias=torch.randn(channels) * 0.5,
    )
    return {k: v.to(device=device, dtype=dtype) for k, v in t.items()}


def reference_with_grads(inputs, grad_y, softplus=True):
    """float64 sequential scan and its autograd gradients, on the inputs' device."""
    from vssm.kernels.reference import selective_scan_reference
    x = {k: v.detach().double().requires_grad_(True) for k, v in inputs.items()}
    y = selective_scan_reference(*x.values(), softplus)
    grads = torch.autograd.grad(y, list(x.values()), grad_y.double())
    return y.detach(), grads


def rel_err(out, ref):
    assert torch.isfinite(out).all()
    return ((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-3)).item()


def assert_compiled_matches_eager(step, inputs):
    """``step(*inputs)`` (a scalar loss) compiled with fullgraph=True (no graph break) gives the eager loss and
    gradients."""
    compiled = torch.compile(step, fullgraph=True, backend="inductor" if CUDA else "aot_eager")
    loss = compiled(*inputs.values())
    grads = torch.autograd.grad(loss, list(inputs.values()))
    loss_ref = step(*inputs.values())
    grads_ref = torch.autograd.grad(loss_ref, list(inputs.values()))
    assert rel_err(loss.detach(), loss_ref.detach().double()) < 1e-5
    for name, g, g_ref in zip(inputs, grads, grads_ref):
        assert rel_err(g, g_ref.double()) < 1e-5, name


@pytest.fixture
def triton_scan():
    from vssm.kernels import triton_scan as ts
    return ts


@pytest.fixture
def tiles(triton_scan):
    """``tiles(**config)``: launch configs (``triton_scan.launch_config``) for the rest of the test."""
    with contextlib.ExitStack() as stack:
        yield lambda **config: stack.enter_context(triton_scan.launch_config(**config))


# (batch, groups, d, n, length, config override): odd lengths, several chunks, groups spanning one or several
# programs (atomic dB/dC), padded N, loads with and without prefetch.
INTERP_CASES = [
    (2, 1, 3, 1, 13, dict(BLOCK_D=2, BLOCK_L=8, num_warps=1)),
    (1, 4, 2, 16, 11, dict(BLOCK_D=2, BLOCK_L=8, num_warps=1)),
    (1, 2, 3, 16, 13, dict(BLOCK_D=4, BLOCK_L=8, num_warps=1, PREFETCH=False)),
    (2, 2, 3, 3, 20, dict(BLOCK_D=2, BLOCK_L=16, num_warps=1)),
    (1, 1, 2, 1, 1, {}),
    (1, 2, 2, 1, 37, {}),
    (3, 1, 4, 8, 9, dict(BLOCK_D=2, BLOCK_L=8, num_warps=1)),  # MambaVision: N=8, one group, windows as batch
]
CUDA_CASES = [
    (2, 4, 96, 1, 3136, {}),
    (2, 4, 48, 1, 777, {}),
    (3, 1, 20, 16, 1001, {}),
    (2, 4, 24, 16, 196, {}),
    (2, 4, 24, 16, 333, dict(PREFETCH=False)),
    (1, 2, 5, 3, 65, {}),
    (1, 1, 2, 1, 1, {}),
    (8, 1, 160, 8, 196, {}),  # MambaVision-T stage 3: 14x14 windows, d_state 8
]
CASES = CUDA_CASES if CUDA else INTERP_CASES


@kernel_test
@pytest.mark.parametrize("batch,groups,d,n,length,config", CASES)
def test_forward_and_grads_match_reference(triton_scan, tiles, batch, groups, d, n, length, config):
    tiles(**config)
    inputs = make_inputs(batch, groups, d, n, length, device=DEVICE)
    y = triton_scan.forward(*inputs.values(), True)
    grad_y = torch.randn_like(y)
    y_ref, grads_ref = reference_with_grads(inputs, grad_y)
    assert y.dtype == torch.float32 and y.shape == y_ref.shape
    assert rel_err(y, y_ref) < 1e-4
    grads = triton_scan.backward(grad_y, *inputs.values(), True)
    for name, g, g_ref in zip(inputs, grads, grads_ref):
        assert g.shape == g_ref.shape and g.dtype == inputs[name].dtype, name
        assert rel_err(g, g_ref) < (1e-3 if length > 1000 else 1e-4), name


@kernel_test
def test_without_softplus(triton_scan, tiles):
    tiles(BLOCK_D=2, BLOCK_L=8, num_warps=1)
    inputs = make_inputs(1, 2, 3, 2, 10, device=DEVICE)
    inputs["delta"] = inputs["delta"].abs()
    inputs["delta_bias"] = inputs["delta_bias"].abs()
    y = triton_scan.forward(*inputs.values(), False)
    grad_y = torch.randn_like(y)
    y_ref, grads_ref = reference_with_grads(inputs, grad_y, softplus=False)
    assert rel_err(y, y_ref) < 1e-4
    for name, g, g_ref in zip(inputs, triton_scan.backward(grad_y, *inputs.values(), False), grads_ref):
        assert rel_err(g, g_ref) < 1e-4, name


@kernel_test
def test_projection_grad_summed_per_image_or_at_once(triton_scan, monkeypatch):
    """The dt_proj gradient (padded rank) is ``ddelta @ low^T`` over all steps, whichever way it is summed."""
    batch, K, channels, rank8, length = 3, 2, 5, 8, 7
    ddelta = torch.randn(K, channels, batch * length, dtype=torch.float64)
    low = torch.randn(K, rank8, batch * length, dtype=torch.float64)
    expected = torch.einsum("kcs,krs->kcr", ddelta, low)
    for threshold in (length, length + 1):  # per image, then one product
        monkeypatch.setattr(triton_scan, "PER_IMAGE_PROJECTION_GRAD", threshold)
        torch.testing.assert_close(triton_scan._projection_grad(ddelta, low, batch).double(), expected)


@kernel_test
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(triton_scan, tiles, dtype):
    batch, groups, d, n, length = (2, 4, 32, 16, 500) if CUDA else (1, 2, 2, 4, 9)
    if not CUDA:
        tiles(BLOCK_D=2, BLOCK_L=8, num_warps=1)
    inputs = make_inputs(batch, groups, d, n, length, dtype=dtype, device=DEVICE)
    y = triton_scan.forward(*inputs.values(), True)
    assert y.dtype == dtype
    grad_y = torch.randn_like(y)
    y_ref, grads_ref = reference_with_grads(inputs, grad_y)
    assert rel_err(y, y_ref) < 1e-2
    for name, g, g_ref in zip(inputs, triton_scan.backward(grad_y, *inputs.values(), True), grads_ref):
        assert g.dtype == dtype, name
        assert rel_err(g, g_ref) < 2e-2, name


@kernel_test
def test_float64_falls_back_to_float64_state(triton_scan):
    """float64 never reaches the kernels: resolution hands "triton" over to the chunked backend (float64 state)."""
    from vssm import kernels
    fallback = kernels.resolve_backend("triton", torch.device("cuda"), torch.float64)
    assert fallback == "chunked" and torch.float64 not in triton_scan.DTYPES
    inputs = make_inputs(1, 2, 2, 3, 7, dtype=torch.float64, device=DEVICE)
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    y = kernels.selective_scan(**leaves, backend="triton" if CUDA else fallback)
    grad_y = torch.randn_like(y)
    y_ref, grads_ref = reference_with_grads(inputs, grad_y)
    assert y.dtype == torch.float64 and rel_err(y.detach(), y_ref) < 1e-10
    for g, g_ref in zip(torch.autograd.grad(y, list(leaves.values()), grad_y), grads_ref):
        assert rel_err(g, g_ref) < 1e-10


@cuda_only
def test_dispatch_auto_picks_triton_and_autograd_works():
    from vssm import kernels
    assert kernels.resolve_backend("auto", torch.device("cuda")) == "triton"
    inputs = make_inputs(2, 4, 16, 1, 300, device="cuda")
    for v in inputs.values():
        v.requires_grad_(True)
    y = kernels.selective_scan(**inputs)
    grad_y = torch.randn_like(y)
    grads = torch.autograd.grad(y, list(inputs.values()), grad_y)
    y_ref, grads_ref = reference_with_grads(inputs, grad_y)
    assert rel_err(y.detach(), y_ref) < 1e-4
    for name, g, g_ref in zip(inputs, grads, grads_ref):
        assert rel_err(g, g_ref) < 1e-4, name


@cuda_only
def test_torch_compile_fullgraph():
    from vssm import kernels

    def step(u, delta, A, B, C, D, bias):
        return (kernels.selective_scan(u, delta, A, B, C, D, bias, backend="triton").float() ** 2).sum()

    inputs = make_inputs(2, 4, 16, 16, 100, dtype=torch.bfloat16, device="cuda")
    for v in inputs.values():
        v.requires_grad_(True)
    compiled = torch.compile(step, fullgraph=True)
    loss = compiled(*inputs.values())
    grads = torch.autograd.grad(loss, list(inputs.values()))
    loss_eager = step(*inputs.values())
    grads_eager = torch.autograd.grad(loss_eager, list(inputs.values()))
    assert torch.allclose(loss, loss_eager, rtol=1e-3)
    for g, ge in zip(grads, grads_eager):
        assert torch.equal(g, ge) or rel_err(g, ge.double()) < 1e-2
    assert kernels.list_backends().count("triton") == 1


def test_launch_config_scopes_overrides_and_rejects_unknown_keys():
    """Overrides hold inside the block only (inner blocks add to outer ones, an exception restores them); the
    A/B switch that lost (REVERSE_BY_FLIP) is no key."""
    ts = pytest.importorskip("vssm.kernels.triton_scan")
    default = ts.pick_config(16, 196, 24, backward=True)
    with ts.launch_config(BLOCK_L=8):
        with ts.launch_config(num_warps=1, PREFETCH=False):
            assert ts.pick_config(16, 196, 24, backward=True) == {**default, "BLOCK_L": 8, "num_warps": 1,
                                                                   "PREFETCH": False}
        assert ts.state_chunk(16, 196, 24) == 8 != default["BLOCK_L"]
    with pytest.raises(RuntimeError), ts.launch_config(BLOCK_D=1):
        raise RuntimeError
    assert ts.pick_config(16, 196, 24, backward=True) == default
    with pytest.raises(ValueError, match="unknown keys.*REVERSE_BY_FLIP"):
        with ts.launch_config(REVERSE_BY_FLIP=False):
            pass


@pytest.mark.parametrize("chunk", [0, 8, 32])
def test_scan2d_fake_follows_the_state_chunk_argument_not_the_launch_config(chunk):
    """The states the op's fake implementation promises have the shape its ``state_chunk`` argument gives,
    whatever launch config is in effect when it is traced."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from vssm import scans
    ts = pytest.importorskip("vssm.kernels.triton_scan")
    pattern = scans.build("cross")
    shapes = []
    with FakeTensorMode():
        inputs = scan2d_inputs(pattern, 2, 3, 4, 5, 16, torch.float32, "cpu", True)
        index = torch.empty(4, 20, dtype=torch.int32)
        for config in ({}, {"BLOCK_L": 16}, {"BLOCK_L": 64}):
            with ts.launch_config(**config):
                _, states = torch.ops.vssm.scan2d(*inputs.values(), index, False, True, chunk, None, torch.float32,
                                                  False)
            shapes.append(tuple(states.shape))
    expected = (2 * 12, -(-20 // chunk), 16) if chunk else (0,)
    assert shapes == [expected] * 3


@kernel_test
def test_compile_traces_custom_op_forward_and_backward(triton_scan, tiles, monkeypatch):
    """fullgraph torch.compile through vssm::selective_scan and its opaque backward op (no graph break)."""
    import importlib
    from vssm import kernels
    ss = importlib.import_module("vssm.kernels.selective_scan")
    backend = "triton"
    if not CUDA:  # the interpreter runs the same kernels on CPU tensors under a CPU-enabled registration
        backend = "triton_interpreted"
        monkeypatch.setattr(ss, "_BACKENDS", dict(ss._BACKENDS))
        monkeypatch.setattr(ss, "_OPAQUE_BACKWARD", set(ss._OPAQUE_BACKWARD))
        kernels.register_backend(backend, triton_scan.forward, triton_scan.backward)
        tiles(BLOCK_D=2, BLOCK_L=8, num_warps=1)
    inputs = make_inputs(1, 2, 3, 2, 10, device=DEVICE)
    for v in inputs.values():
        v.requires_grad_(True)

    def step(*args):
        return (kernels.selective_scan(*args, backend=backend) ** 2).sum()

    assert_compiled_matches_eager(step, inputs)


# ---- fused scan over a 2D map (kernels.scan2d): gather from the map, scan, scatter-add ----------------------

def scan2d_inputs(pattern, batch, channels, H, W, n, dtype, device, channels_last):
    K, L = pattern.K, pattern.sequence_length(H, W)
    ck = pattern.channels_per_sequence(channels)
    x = torch.randn(batch, channels, H, W)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    t = dict(x=x, delta=torch.randn(batch, K * ck, L) * 0.5, A=-torch.rand(K * ck, n) - 0.01,
             B=torch.randn(batch, K, n, L), C=torch.randn(batch, K, n, L), D=torch.randn(K * ck),
             delta_bias=torch.randn(K * ck) * 0.5)
    out = {k: v.to(device=device, dtype=dtype) for k, v in t.items()}
    if channels_last:  # .to() keeps the memory format; make it explicit for the low-precision copies
        out["x"] = out["x"].contiguous(memory_format=torch.channels_last)
    return out


def scan2d_reference(pattern, inputs, grad_y, per_sequence=False):
    """float64 composition ``merge(scan(flatten(x)))`` (``scatter`` with ``per_sequence``) and its autograd
    gradients."""
    from vssm.kernels.reference import selective_scan_reference
    x = {k: v.detach().double().requires_grad_(True) for k, v in inputs.items()}
    xs = pattern.flatten(x["x"])
    batch, K, ck, L = xs.shape
    ys = selective_scan_reference(xs.reshape(batch, K * ck, L), *list(x.values())[1:], True)
    y = (pattern.scatter if per_sequence else pattern.merge)(ys.view(xs.shape), inputs["x"].shape[-2:])
    return y.detach(), torch.autograd.grad(y, list(x.values()), grad_y.double())


# (pattern name, options, batch, channels, H, W, N): padding (window, atrous on odd maps), split channels (group)
SCAN2D_CASES = [
    ("cross", {}, 2, 3, 3, 5, 1),
    ("cross", {}, 1, 3, 4, 3, 2),
    ("group", {}, 1, 8, 3, 5, 1),
    ("atrous", {}, 1, 3, 5, 3, 1),
    ("window", {"directions": ["h", "v_flip", "w2", "w7_flip"]}, 1, 2, 5, 6, 3),
] if not CUDA else [
    ("cross", {}, 2, 96, 56, 56, 1),
    ("cross", {}, 2, 40, 13, 29, 16),
    ("group", {}, 2, 64, 28, 28, 1),
    ("atrous", {}, 2, 48, 27, 33, 16),
    ("window", {"directions": ["h", "v_flip", "w2", "w7_flip"]}, 2, 32, 15, 20, 16),
]


@kernel_test
@pytest.mark.parametrize("channels_last,save_states", [(True, True), (False, False)])
@pytest.mark.parametrize("name,options,batch,channels,H,W,n", SCAN2D_CASES)
def test_scan2d_matches_flatten_scan_merge(triton_scan, tiles, name, options, batch, channels, H, W, n, channels_last,
                                           save_states):
    """Forward and gradients; the backward either reuses the forward's chunk-start states or recomputes them."""
    from vssm import scans
    if not CUDA:
        tiles(BLOCK_D=2, BLOCK_L=8, num_warps=1)
    pattern = scans.build(name, **options)
    inputs = scan2d_inputs(pattern, batch, channels, H, W, n, torch.float32, DEVICE, channels_last)
    index = pattern.device_index(H, W, torch.device(DEVICE), torch.int32)
    y, states = triton_scan.scan2d_forward(*inputs.values(), index, pattern.split_channels, True, save_states)
    grad_y = torch.randn_like(y)
    y_ref, grads_ref = scan2d_reference(pattern, inputs, grad_y)
    assert y.dtype == torch.float32 and y.shape == y_ref.shape
    assert rel_err(y, y_ref) < 1e-4
    width = inputs["delta"].shape[1]
    chunk = triton_scan.state_chunk(n, index.shape[1], width // pattern.K)
    expected = triton_scan.states_shape(batch, width, n, index.shape[1], chunk) if save_states else (0,)
    assert tuple(states.shape) == tuple(expected)
    grads = triton_scan.scan2d_backward(grad_y, *inputs.values(), index, pattern.split_channels, True, states)
    for key, g, g_ref in zip(inputs, grads, grads_ref):
        assert g.shape == g_ref.shape and g.dtype == inputs[key].dtype, key
        assert rel_err(g, g_ref) < 1e-3, key
    assert grads[0].stride() == inputs["x"].stride()  # dx in x's layout


@kernel_test
@pytest.mark.parametrize("name,options,batch,channels,H,W,n",
                         [case for case in SCAN2D_CASES if case[0] != "atrous"])  # atrous sequences cover a part
def test_scan2d_per_sequence_maps(triton_scan, tiles, name, options, batch, channels, H, W, n):
    """per_sequence: the K outputs each at their positions in a map of their own, stored in the output dtype;
    gradients through the K maps."""
    from vssm import scans
    if not CUDA:
        tiles(BLOCK_D=2, BLOCK_L=8, num_warps=1)
    pattern = scans.build(name, **options)
    inputs = scan2d_inputs(pattern, batch, channels, H, W, n, torch.float32, DEVICE, True)
    index = pattern.device_index(H, W, torch.device(DEVICE), torch.int32)
    for dtype in (torch.float32, torch.bfloat16):
        y, states = triton_scan.scan2d_forward(*inputs.values(), index, pattern.split_channels, True, True, None,
                                               dtype, True)
        grad_y = torch.randn(y.shape, device=DEVICE).to(dtype)
        y_ref, grads_ref = scan2d_reference(pattern, inputs, grad_y, per_sequence=True)
        assert y.dtype == dtype and y.shape == y_ref.shape == (batch, pattern.K, channels // (
            pattern.K if pattern.split_channels else 1), H, W)
        assert rel_err(y, y_ref) < (1e-4 if dtype == torch.float32 else 1e-2)
        grads = triton_scan.scan2d_backward(grad_y, *inputs.values(), index, pattern.split_channels, True, states)
        for key, g, g_ref in zip(inputs, grads, grads_ref):
            assert g.shape == g_ref.shape and rel_err(g, g_ref) < 1e-3, key


@kernel_test
def test_scan2d_states_at_finer_chunks_than_the_forward(triton_scan):
    """Default configs: the forward's chunks (BLOCK_L 64 here) are longer than the backward's (32), so the forward
    stores states inside its chunks; the backward must still match the reference."""
    from vssm import scans
    pattern = scans.build("cross")
    H, W = (6, 7) if not CUDA else (40, 50)
    assert (triton_scan.pick_config(1, H * W, 2)["BLOCK_L"] > triton_scan.state_chunk(1, H * W, 2))
    inputs = scan2d_inputs(pattern, 1, 2, H, W, 1, torch.float32, DEVICE, True)
    index = pattern.device_index(H, W, torch.device(DEVICE), torch.int32)
    y, states = triton_scan.scan2d_forward(*inputs.values(), index, False, True, True)
    assert states.shape[1] == -(-H * W // triton_scan.state_chunk(1, H * W, 2))
    grad_y = torch.randn_like(y)
    y_ref, grads_ref = scan2d_reference(pattern, inputs, grad_y)
    assert rel_err(y, y_ref) < 1e-4
    grads = triton_scan.scan2d_backward(grad_y, *inputs.values(), index, False, True, states)
    for key, g, g_ref in zip(inputs, grads, grads_ref):
        assert rel_err(g, g_ref) < 1e-3, key
    with pytest.raises(ValueError, match="do not fit"):
        triton_scan.scan2d_backward(grad_y, *inputs.values(), index, False, True, states[:, :1])


@kernel_test
@pytest.mark.parametrize("name,channels,H,W,n,rank", [
    ("cross", 3, 4, 5, 1, 3), ("group", 8, 3, 5, 3, 2), ("atrous", 3, 5, 3, 1, 2),
] if not CUDA else [
    ("cross", 96, 56, 56, 1, 6), ("group", 64, 28, 28, 16, 4), ("atrous", 48, 27, 33, 1, 3),
    ("cross", 384, 14, 14, 1, 24)])
def test_scan2d_with_dt_projection(triton_scan, tiles, name, channels, H, W, n, rank):
    """dt_proj (K, C_k, R) and the low-rank dt (batch, K, R, L): delta is projected in the op; gradients of both."""
    from vssm import scans
    if not CUDA:
        tiles(BLOCK_D=2, BLOCK_L=8, num_warps=1)
    pattern = scans.build(name)
    batch = 2
    inputs = scan2d_inputs(pattern, batch, channels, H, W, n, torch.float32, DEVICE, True)
    K, L = pattern.K, pattern.sequence_length(H, W)
    ck = pattern.channels_per_sequence(channels)
    low = torch.randn(batch, K, rank + 2, L, device=DEVICE)[:, :, :rank]  # a slice, as the models' x_dbl gives it
    proj = torch.randn(K, ck, rank, device=DEVICE) * 0.3
    index = pattern.device_index(H, W, torch.device(DEVICE), torch.int32)
    args = dict(inputs, delta=low)
    y, states = triton_scan.scan2d_forward(*args.values(), index, pattern.split_channels, True, True, proj)
    grad_y = torch.randn_like(y)
    # reference: delta formed in float64, then the composition; gradients reach low and proj through it
    low64 = low.double().requires_grad_(True)
    proj64 = proj.double().requires_grad_(True)
    delta64 = torch.einsum("bkrl,kdr->bkdl", low64, proj64).reshape(batch, K * ck, L)
    ref_inputs = dict(inputs, delta=delta64)
    y_ref, grads_ref = scan2d_reference(pattern, ref_inputs, grad_y)
    assert rel_err(y, y_ref) < 1e-4
    grads = triton_scan.scan2d_backward(grad_y, *args.values(), index, pattern.split_channels, True, states, proj)
    assert len(grads) == 8
    # chain rule through delta for the low-rank input and the projection
    d_delta_ref = grads_ref[1].view(batch, K, ck, L)
    d_low_ref = torch.einsum("bkdl,kdr->bkrl", d_delta_ref, proj64.detach())
    d_proj_ref = torch.einsum("bkdl,bkrl->kdr", d_delta_ref, low64.detach())
    expected = [grads_ref[0], d_low_ref, *grads_ref[2:], d_proj_ref]
    for key, g, g_ref in zip(["x", "low", "A", "B", "C", "D", "delta_bias", "proj"], grads, expected):
        assert g.shape == g_ref.shape, key
        assert rel_err(g, g_ref) < 1e-3, key


@kernel_test
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_scan2d_low_precision(triton_scan, tiles, dtype):
    from vssm import scans
    size = (2, 64, 20, 24, 1) if CUDA else (1, 4, 3, 4, 1)
    if not CUDA:
        tiles(BLOCK_D=2, BLOCK_L=8, num_warps=1)
    pattern = scans.build("cross")
    inputs = scan2d_inputs(pattern, *size, dtype, DEVICE, True)
    index = pattern.device_index(size[2], size[3], torch.device(DEVICE), torch.int32)
    y, states = triton_scan.scan2d_forward(*inputs.values(), index, False, True, True)
    grad_y = torch.randn_like(y)
    y_ref, grads_ref = scan2d_reference(pattern, inputs, grad_y)
    assert y.dtype == torch.float32 and rel_err(y, y_ref) < 1e-2
    for key, g, g_ref in zip(inputs, triton_scan.scan2d_backward(grad_y, *inputs.values(), index, False, True,
                                                                 states), grads_ref):
        assert g.dtype == dtype and rel_err(g, g_ref) < 2e-2, key


def cross_op_inputs(triton_scan, tiles, batch, channels, H, W, n):
    """Inputs of the ``vssm::scan2d`` op for the cross pattern (tiny tiles under the interpreter): the tensors,
    requiring grad, the index map and the chunk length of the states to store."""
    from vssm import scans
    if not CUDA:
        tiles(BLOCK_D=2, BLOCK_L=8, num_warps=1)
    pattern = scans.build("cross")
    inputs = scan2d_inputs(pattern, batch, channels, H, W, n, torch.float32, DEVICE, True)
    for v in inputs.values():
        v.requires_grad_(True)
    return inputs, pattern.device_index(H, W, torch.device(DEVICE), torch.int32), triton_scan.state_chunk(n, H * W,
                                                                                                        channels)


@kernel_test
def test_scan2d_op_autograd_and_compile(triton_scan, tiles):
    """torch.ops.vssm.scan2d: autograd through the opaque backward op, fullgraph compile without breaks."""
    inputs, index, chunk = cross_op_inputs(triton_scan, tiles, 1, 3, 4, 5, 2)

    def step(*args):
        return (torch.ops.vssm.scan2d(*args, index, False, True, chunk, None, torch.float32, False)[0] ** 2).sum()

    assert_compiled_matches_eager(step, inputs)


@kernel_test
def test_scan2d_op_16bit_output(triton_scan, tiles):
    """out_dtype bfloat16: the float32 sum of the K outputs rounded once, channels-last; the backward takes the
    bfloat16 gradient and gives what the float32 op gives for that gradient."""
    inputs, index, chunk = cross_op_inputs(triton_scan, tiles, 2, 3, 4, 5, 1)
    y16 = torch.ops.vssm.scan2d(*inputs.values(), index, False, True, chunk, None, torch.bfloat16, False)[0]
    y32 = torch.ops.vssm.scan2d(*inputs.values(), index, False, True, chunk, None, torch.float32, False)[0]
    assert y16.dtype == torch.bfloat16 and y16.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(y16, y32.detach().double()) < 1e-2
    grad = torch.randn(y32.shape, device=DEVICE).to(torch.bfloat16)
    grads16 = torch.autograd.grad(y16, list(inputs.values()), grad)
    grads32 = torch.autograd.grad(y32, list(inputs.values()), grad.float())
    for key, g16, g32 in zip(inputs, grads16, grads32):
        assert g16.dtype == g32.dtype and rel_err(g16, g32.double()) < 1e-5, key


@kernel_test
@pytest.mark.parametrize("per_sequence", [False, True])
def test_scan2d_ops_pass_opcheck_with_strided_inputs(triton_scan, tiles, per_sequence):
    """torch.library.opcheck (schema, fake tensors vs real outputs incl. strides, autograd registration) on
    inputs that are views with unusual strides, as compiled graphs hand them over; summed or per-sequence maps."""
    from vssm import scans
    if not CUDA:
        tiles(BLOCK_D=2, BLOCK_L=8, num_warps=1)
    pattern = scans.build("cross")
    inputs = scan2d_inputs(pattern, 2, 3, 4, 5, 1, torch.float32, DEVICE, True)
    K, L = pattern.K, 20
    low = torch.randn(2, K, L, 3, device=DEVICE).transpose(2, 3)  # (b, K, R, L) view, R innermost in memory
    proj = torch.randn(K, 3, 3, device=DEVICE)
    index = pattern.device_index(4, 5, torch.device(DEVICE), torch.int32)
    chunk = triton_scan.state_chunk(1, L, 3)
    args = (inputs["x"], low, *list(inputs.values())[2:], index, False, True, chunk, proj, torch.bfloat16,
            per_sequence)
    torch.library.opcheck(torch.ops.vssm.scan2d.default, args)
    y, states = torch.ops.vssm.scan2d(*args)
    assert y.dtype == torch.bfloat16 and y.dim() == (5 if per_sequence else 4)
    grad_y = torch.randn(y.shape, device=DEVICE, dtype=y.dtype).transpose(-2, -1).contiguous().transpose(-2, -1)
    bwd_args = (grad_y, inputs["x"], low, *list(inputs.values())[2:], index, states, chunk, False, True, proj)
    torch.library.opcheck(torch.ops.vssm.scan2d_backward.default, bwd_args,
                          test_utils=("test_schema", "test_faketensor"))


@kernel_test
def test_scan2d_flop_formula_counts_scan_and_projection(triton_scan, tiles):
    """FlopCounterMode sees the fused op: the selective scan's count for K*C_k channels, plus 2*R per step size
    when the op projects the low-rank dt."""
    from torch.utils.flop_counter import FlopCounterMode
    batch, channels, H, W, n, rank = 2, 3, 4, 5, 2, 3
    inputs, index, _ = cross_op_inputs(triton_scan, tiles, batch, channels, H, W, n)
    K, L = 4, H * W
    scan_flops = 9 * batch * L * K * channels * n + batch * K * channels * L
    low = torch.randn(batch, K, rank, L, device=DEVICE)
    proj = torch.randn(K, channels, rank, device=DEVICE)
    for delta, dt_proj, expected in ((inputs["delta"], None, scan_flops),
                                     (low, proj, scan_flops + 2 * batch * K * channels * rank * L)):
        args = (inputs["x"], delta, *list(inputs.values())[2:], index, False, True, 0, dt_proj, torch.float32,
                False)
        with FlopCounterMode(display=False) as counter:
            torch.ops.vssm.scan2d(*args)
        assert counter.get_total_flops() == expected


# ---- deterministic mode: torch.use_deterministic_algorithms(True) -----------------------------------------

@pytest.fixture
def deterministic_algorithms():
    """A switch for ``torch.use_deterministic_algorithms``, restored after the test."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield torch.use_deterministic_algorithms
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.fixture
def atomics(monkeypatch):
    """Under the interpreter: a list that grows by one entry per executed atomic read-modify-write."""
    if CUDA:
        return None
    from triton.runtime import interpreter
    calls = []
    create = interpreter.InterpreterBuilder.create_atomic_rmw

    def counted(self, *args, **kwargs):
        calls.append(args[0])
        return create(self, *args, **kwargs)

    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_atomic_rmw", counted)
    return calls


# one case per registered pattern (test_determinism_cases_cover_every_pattern): (name, options, batch, channels,
# H, W, N, dt rank)
DETERMINISM_CASES = [
    ("cross", {}, 1, 3, 3, 5, 2, 2),
    ("group", {}, 1, 8, 3, 5, 1, 0),
    ("atrous", {}, 1, 3, 5, 3, 3, 0),
    ("window", {"directions": ["h", "v_flip", "w2", "w7_flip"]}, 1, 2, 5, 6, 1, 0),
] if not CUDA else [
    ("cross", {}, 4, 96, 56, 56, 1, 6),
    ("group", {}, 4, 64, 28, 28, 1, 0),
    ("atrous", {}, 4, 96, 27, 33, 16, 0),
    ("window", {"directions": ["h", "v_flip", "w2", "w7_flip"]}, 4, 64, 15, 20, 16, 0),
]


def test_determinism_cases_cover_every_pattern():
    from vssm import scans
    assert {case[0] for case in DETERMINISM_CASES} == set(scans.list_scans())


def run_scan2d(triton_scan, pattern, args, index, dt_proj, grad_y):
    """Output and every gradient of the fused op, as the autograd path runs it (states saved)."""
    y, states = triton_scan.scan2d_forward(*args.values(), index, pattern.split_channels, True, True, dt_proj)
    return [y, *triton_scan.scan2d_backward(grad_y, *args.values(), index, pattern.split_channels, True, states,
                                            dt_proj)]


@kernel_test
@pytest.mark.parametrize("name,options,batch,channels,H,W,n,rank", DETERMINISM_CASES)
def test_scan2d_deterministic_mode(triton_scan, tiles, deterministic_algorithms, atomics, name, options, batch,
                                   channels, H, W, n, rank):
    """With deterministic algorithms on, the fused scan runs without float atomics (counted under the interpreter),
    two runs give bitwise the same output and gradients, in the layouts of the default mode, and these agree with
    the default (atomic) mode within float32 rounding. Without the switch the atomics are used."""
    from vssm import scans
    if not CUDA:
        tiles(BLOCK_D=2, BLOCK_L=8, num_warps=1)
    pattern = scans.build(name, **options)
    for row in pattern.index_map(H, W):  # what plain stores rely on: a sequence visits a position at most once
        visited = row[row >= 0]
        assert visited.unique().numel() == visited.numel()
    inputs = scan2d_inputs(pattern, batch, channels, H, W, n, torch.float32, DEVICE, True)
    dt_proj = None
    if rank:
        K, L, ck = pattern.K, pattern.sequence_length(H, W), pattern.channels_per_sequence(channels)
        inputs["delta"] = torch.randn(batch, K, rank, L, device=DEVICE)
        dt_proj = torch.randn(K, ck, rank, device=DEVICE) * 0.5
    index = pattern.device_index(H, W, torch.device(DEVICE), torch.int32)
    grad_y = torch.randn(batch, channels, H, W, device=DEVICE)

    deterministic_algorithms(False)
    default = run_scan2d(triton_scan, pattern, inputs, index, dt_proj, grad_y)
    if atomics is not None:
        assert len(atomics) > 0
        atomics.clear()
    deterministic_algorithms(True)
    first = run_scan2d(triton_scan, pattern, inputs, index, dt_proj, grad_y)
    second = run_scan2d(triton_scan, pattern, inputs, index, dt_proj, grad_y)
    if atomics is not None:
        assert atomics == []
    names = ["y", "dx", "ddelta", "dA", "dB", "dC", "dD", "ddelta_bias"] + (["ddt_proj"] if rank else [])
    assert len(first) == len(names)
    for key, a, b, ref in zip(names, first, second, default):
        assert torch.equal(a, b), key
        assert a.shape == ref.shape and a.dtype == ref.dtype and a.stride() == ref.stride(), key
        assert rel_err(a, ref.double()) < 1e-5, key
    assert first[0].is_contiguous(memory_format=torch.channels_last)
    assert first[1].stride() == inputs["x"].stride()


@kernel_test
def test_selective_scan_has_no_atomics(triton_scan, tiles, deterministic_algorithms, atomics):
    """The 1D kernels write every output once, in either mode: bitwise the same twice with the switch on."""
    if not CUDA:
        tiles(BLOCK_D=2, BLOCK_L=8, num_warps=1)
    inputs = make_inputs(1, 2, 2, 2, 10, device=DEVICE) if not CUDA else make_inputs(4, 4, 96, 16, 3136, device=DEVICE)
    deterministic_algorithms(True)
    runs = []
    for _ in range(2):
        y = triton_scan.forward(*inputs.values(), True)
        runs.append([y, *triton_scan.backward(torch.ones_like(y), *inputs.values(), True)])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert atomics is None or atomics == []


@kernel_test
@pytest.mark.parametrize("name", ["cross", "group"])
def test_scan2d_op_deterministic_fake_layouts(triton_scan, tiles, deterministic_algorithms, name):
    """opcheck of the ops in deterministic mode: the fake implementations still describe the outputs."""
    from vssm import scans
    if not CUDA:
        tiles(BLOCK_D=2, BLOCK_L=8, num_warps=1)
    deterministic_algorithms(True)
    pattern = scans.build(name)
    inputs = scan2d_inputs(pattern, 1, 4, 2, 3, 1, torch.float32, DEVICE, False)
    index = pattern.device_index(2, 3, torch.device(DEVICE), torch.int32)
    chunk = triton_scan.state_chunk(1, pattern.sequence_length(2, 3), pattern.channels_per_sequence(4))
    args = (*inputs.values(), index, pattern.split_channels, True, chunk, None, torch.bfloat16, False)
    torch.library.opcheck(torch.ops.vssm.scan2d.default, args, test_utils=("test_schema", "test_faketensor"))
    y, states = torch.ops.vssm.scan2d(*args)
    bwd_args = (torch.randn(y.shape, device=DEVICE).to(y.dtype), *inputs.values(), index, states, chunk,
                pattern.split_channels, True, None)
    torch.library.opcheck(torch.ops.vssm.scan2d_backward.default, bwd_args,
                          test_utils=("test_schema", "test_faketensor"))


@cuda_only
def test_scan2d_auto_dispatch_matches_pytorch_backend():
    from vssm import kernels
    from vssm import scans
    inputs = scan2d_inputs(scans.build("cross"), 2, 32, 14, 14, 1, torch.bfloat16, "cuda", True)
    y = kernels.scan2d(*inputs.values(), pattern="cross")
    y_ref = kernels.scan2d(*inputs.values(), pattern="cross", backend="chunked")
    assert y.dtype == torch.float32 and rel_err(y, y_ref.double()) < 1e-2


@pytest.mark.skipif(DEVICE is not None, reason="kernel tests already run directly in this process")
def test_cpu_under_triton_interpreter():
    """Re-run this file's kernel tests on the CPU through the Triton interpreter (tiny sizes)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
