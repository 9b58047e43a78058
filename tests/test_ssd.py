"""kernels SSD family (causal chunked, non-causal, bidirectional): backends against the sequential reference and the
definition, gradients, the selective-scan identity, the custom op, FLOPs and input errors."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from vssm import kernels
from vssm.kernels.ssd import ssd_flops

torch.set_num_threads(min(2, torch.get_num_threads()))

ENTRY = {"causal": kernels.ssd_causal, "noncausal": kernels.ssd_noncausal}


def make_inputs(batch=2, length=7, heads=4, dim=3, groups=2, n=5, dtype=torch.float32, requires_grad=False):
    t = dict(
        x=torch.randn(batch, length, heads, dim),
        dt=torch.randn(batch, length, heads) * 0.5,
        A=-torch.rand(heads) - 0.1,
        B=torch.randn(batch, length, groups, n),
        C=torch.randn(batch, length, groups, n),
        D=torch.randn(heads),
        dt_bias=torch.randn(heads) * 0.5,
    )
    t = {k: v.to(dtype) for k, v in t.items()}
    if requires_grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


def naive(x, dt, A, B, C, D, dt_bias, causal, softplus=True):
    """Scalar loops over (batch, head, position) straight from the definitions, float64."""
    x, dt, A, B, C, D, dt_bias = (t.double() for t in (x, dt, A, B, C, D, dt_bias))
    batch, length, heads, _ = x.shape
    per_group = heads // B.shape[2]
    dt = dt + dt_bias
    dt = F.softplus(dt) if softplus else dt
    y = torch.zeros_like(x)
    for b in range(batch):
        for h in range(heads):
            g = h // per_group
            for t in range(length):
                for s in range(length):
                    if causal and s > t:
                        continue
                    w = torch.exp(A[h] * dt[b, s + 1:t + 1, h].sum()) * dt[b, s, h] if causal else dt[b, s, h] * A[h]
                    y[b, t, h] += (C[b, t, g] @ B[b, s, g]) * w * x[b, s, h]
                y[b, t, h] += D[h] * x[b, t, h]
    return y


@pytest.mark.parametrize("form", ["causal", "noncausal"])
@pytest.mark.parametrize("softplus", [True, False])
def test_reference_matches_definition(form, softplus):
    inputs = make_inputs(batch=2, length=6, heads=4, dim=2, groups=2, n=3, dtype=torch.float64)
    if not softplus:
        inputs["dt"] = inputs["dt"].abs()
        inputs["dt_bias"] = inputs["dt_bias"].abs()
    y = ENTRY[form](**inputs, dt_softplus=softplus, backend="reference")
    assert y.dtype == torch.float64
    assert torch.allclose(y, naive(**inputs, causal=form == "causal", softplus=softplus), atol=1e-12)


@pytest.mark.parametrize("length,chunk", [(1, 64), (7, 4), (13, 5), (64, 16), (67, 16), (100, 256)])
@pytest.mark.parametrize("heads,groups", [(4, 1), (4, 2), (6, 3)])
def test_chunked_causal_matches_reference(length, chunk, heads, groups):
    inputs = make_inputs(batch=2, length=length, heads=heads, groups=groups, requires_grad=True)
    outs, grads = [], []
    for backend in ("reference", "chunked"):
        y = kernels.ssd_causal(**inputs, dt_softplus=True, chunk_size=chunk, backend=backend)
        g_y = torch.linspace(-1, 1, y.numel()).view_as(y)
        grads.append(torch.autograd.grad(y, list(inputs.values()), g_y))
        outs.append(y.detach())
    assert (outs[0] - outs[1]).abs().max() <= 1e-5 * outs[0].abs().max().clamp_min(1)
    for name, g_ref, g_chk in zip(inputs, *grads):
        assert (g_ref - g_chk).abs().max() <= 1e-4 * g_ref.abs().max().clamp_min(1), name


@pytest.mark.parametrize("length", [1, 9, 100])
@pytest.mark.parametrize("heads,groups", [(4, 1), (4, 2), (6, 3)])
def test_chunked_noncausal_matches_reference(length, heads, groups):
    inputs = make_inputs(batch=2, length=length, heads=heads, groups=groups, requires_grad=True)
    outs, grads = [], []
    for backend in ("reference", "chunked"):
        y = kernels.ssd_noncausal(**inputs, dt_softplus=True, backend=backend)
        grads.append(torch.autograd.grad(y, list(inputs.values()), torch.linspace(-1, 1, y.numel()).view_as(y)))
        outs.append(y.detach())
    assert (outs[0] - outs[1]).abs().max() <= 1e-5 * outs[0].abs().max().clamp_min(1)
    for name, g_ref, g_chk in zip(inputs, *grads):
        assert (g_ref - g_chk).abs().max() <= 1e-4 * g_ref.abs().max().clamp_min(1), name


@pytest.mark.parametrize("form", ["causal", "noncausal", "bidirectional"])
@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_gradcheck_float64(form, backend):
    inputs = make_inputs(batch=1, length=5, heads=2, dim=2, groups=2, n=2, dtype=torch.float64, requires_grad=True)
    if form == "noncausal":
        fn = lambda *a: kernels.ssd_noncausal(*a, dt_softplus=True, backend=backend)  # noqa: E731
    else:
        entry = kernels.ssd_causal if form == "causal" else kernels.ssd_bidirectional
        fn = lambda *a: entry(*a, dt_softplus=True, chunk_size=2, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(inputs.values()))


def test_causal_ssd_is_grouped_selective_scan_with_scalar_decay():
    """SSD = selective scan with channels (H, P), A[c, :] = A_h, delta[c] = dt_h and the groups of B/C."""
    batch, length, heads, dim, groups, n = 2, 11, 4, 3, 2, 5
    t = make_inputs(batch, length, heads, dim, groups, n, dtype=torch.float64)
    y = kernels.ssd_causal(**t, dt_softplus=True, chunk_size=4, backend="chunked")
    channels = heads * dim
    u = t["x"].reshape(batch, length, channels).transpose(1, 2)
    delta = t["dt"].repeat_interleave(dim, dim=2).transpose(1, 2)
    A = t["A"].repeat_interleave(dim)[:, None].expand(channels, n)
    ys = kernels.selective_scan(u, delta, A, t["B"].permute(0, 2, 3, 1), t["C"].permute(0, 2, 3, 1),
                                t["D"].repeat_interleave(dim), t["dt_bias"].repeat_interleave(dim),
                                delta_softplus=True, backend="reference")
    assert torch.allclose(y, ys.transpose(1, 2).reshape(batch, length, heads, dim), atol=1e-12)


@pytest.mark.parametrize("groups", [1, 2])
def test_bidirectional_is_forward_and_reversed_halves(groups):
    t = make_inputs(batch=2, length=9, heads=4, dim=2, groups=groups, n=3, dtype=torch.float64)
    y = kernels.ssd_bidirectional(**t, dt_softplus=True, chunk_size=4)
    half = lambda v, i: v[..., 2 * i:2 * i + 2] if v.dim() < 3 else v[:, :, 2 * i:2 * i + 2]  # noqa: E731
    bc = lambda i: (t["B"], t["C"]) if groups == 1 else (t["B"][:, :, i:i + 1], t["C"][:, :, i:i + 1])  # noqa: E731
    fwd = naive(half(t["x"], 0), half(t["dt"], 0), half(t["A"], 0), *bc(0), half(t["D"], 0), half(t["dt_bias"], 0),
                causal=True)
    flip = lambda v: v.flip(1)  # noqa: E731
    bwd = naive(flip(half(t["x"], 1)), flip(half(t["dt"], 1)), half(t["A"], 1), *map(flip, bc(1)), half(t["D"], 1),
                half(t["dt_bias"], 1), causal=True).flip(1)
    assert torch.allclose(y, torch.cat([fwd, bwd], dim=2), atol=1e-12)


def test_noncausal_has_no_length_squared_matrix():
    """L = 2^17: an L x L float32 matrix would take 64 GiB; the chunked form keeps O(L) memory."""
    t = make_inputs(batch=1, length=2 ** 17, heads=2, dim=2, groups=1, n=2)
    y = kernels.ssd_noncausal(**t, backend="chunked")
    x, B, C = t["x"].double(), t["B"][:, :, 0].double(), t["C"][:, :8, 0].double()
    weight = (t["dt"] + t["dt_bias"]).double() * t["A"].double()
    state = torch.einsum("bln,blh,blhp->bhnp", B, weight, x)
    head = torch.einsum("bln,bhnp->blhp", C, state) + t["D"].double()[:, None] * x[:, :8]
    assert y.shape == t["x"].shape and torch.allclose(y[:, :8].double(), head, rtol=1e-4, atol=1e-3)


def test_long_causal_sequence_strongly_negative_A_is_stable():
    t = make_inputs(batch=1, length=1500, heads=2, dim=2, groups=1, n=4)
    t["A"] = t["A"] * 300
    t["dt"] = t["dt"] + 3
    y = kernels.ssd_causal(**t, dt_softplus=True, chunk_size=64, backend="chunked")
    ref = kernels.ssd_causal(**t, dt_softplus=True, backend="reference")
    assert torch.isfinite(y).all() and torch.allclose(y, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_keep_dtype(dtype):
    t = make_inputs(length=10)
    low = {k: v.to(dtype) for k, v in t.items()}
    for form, fn in ENTRY.items():
        y = fn(**low, dt_softplus=True)
        assert y.dtype == dtype
        ref = fn(**{k: v.float() for k, v in low.items()}, dt_softplus=True)
        assert (y.float() - ref).abs().max() <= 2e-2 * ref.abs().max(), form


def test_optional_D_and_dt_bias_are_zero():
    t = make_inputs()
    for fn in ENTRY.values():
        zero = dict(t, D=torch.zeros(4), dt_bias=torch.zeros(4))
        assert torch.equal(fn(**dict(t, D=None, dt_bias=None)), fn(**zero))


# ---- custom op: opcheck, compile, FLOPs -------------------------------------------------------------

@pytest.mark.parametrize("form", ["causal", "noncausal"])
def test_custom_op_opcheck(form):
    t = make_inputs(batch=1, length=5, heads=2, dim=2, groups=1, n=3, requires_grad=True)
    args = (*t.values(), True, form, 2, "chunked")
    torch.library.opcheck(torch.ops.vssm.ssd.default, args)


def test_compile_is_one_graph_without_breaks():
    torch._dynamo.reset()
    t = make_inputs(length=6)

    def f(x, dt, A, B, C, D, dt_bias):
        return kernels.ssd_noncausal(x, dt, A, B, C, D, dt_bias) + kernels.ssd_bidirectional(x, dt, A, B, C, D, dt_bias)

    explanation = torch._dynamo.explain(f)(*t.values())
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    assert torch.allclose(compiled(*t.values()), f(*t.values()), atol=1e-6)


def test_flop_counter_uses_formula():
    t = make_inputs(batch=2, length=10, heads=4, dim=3, groups=2, n=5)
    with FlopCounterMode(display=False) as counter:
        kernels.ssd_noncausal(**t)
    assert counter.get_total_flops() == 4 * 2 * 10 * 4 * 5 * 3
    with FlopCounterMode(display=False) as counter:
        kernels.ssd_causal(**t, chunk_size=4)
    assert counter.get_total_flops() == ssd_flops((2, 10, 4, 3), (2, 10, 2, 5), "causal", 4) \
        == 4 * 2 * 10 * 4 * 5 * 3 + 2 * 2 * 10 * 4 * (2 * 5 + 4 * 3)


def test_benchmark_ssd_runs_on_cpu(capsys):
    """``tools/benchmark.py ssd`` times every form and the selective scan on the CPU, first length = ratio 1."""
    from _helpers import load_tool
    rows = load_tool("benchmark").main(["ssd", "--device", "cpu", "--lengths", "16,32", "--heads", "2", "--head-dim",
                                        "2", "--state", "2", "--chunk", "8", "--rep", "1", "--backward"])
    assert {name for name, _, _ in rows} == {"noncausal", "causal", "bidirectional", "selective_scan"}
    assert [L for _, L, _ in rows] == [16] * 4 + [32] * 4 and all(ms > 0 for _, _, ms in rows)
    assert "x first L" in capsys.readouterr().out


# ---- errors ---------------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    t = make_inputs()
    with pytest.raises(ValueError, match=r"x must be \(batch, L, H, P\)"):
        kernels.ssd_causal(**dict(t, x=t["x"][0]))
    with pytest.raises(ValueError, match=r"dt must be \(batch, L, H\)"):
        kernels.ssd_noncausal(**dict(t, dt=t["dt"][:, :3]))
    with pytest.raises(ValueError, match="one decay per head"):
        kernels.ssd_causal(**dict(t, A=torch.randn(4, 5)))
    with pytest.raises(ValueError, match="B and C"):
        kernels.ssd_causal(**dict(t, C=t["C"][:, :, :1]))
    with pytest.raises(ValueError, match="not divisible by the 3 groups"):
        kernels.ssd_causal(**dict(t, B=torch.randn(2, 7, 3, 5), C=torch.randn(2, 7, 3, 5)))
    with pytest.raises(ValueError, match=r"D must be \(H,\)"):
        kernels.ssd_noncausal(**dict(t, D=torch.randn(3)))
    with pytest.raises(TypeError, match="floating-point"):
        kernels.ssd_causal(**dict(t, x=t["x"].long()))
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        kernels.ssd_causal(**t, chunk_size=0)
    with pytest.raises(ValueError, match="unknown causal SSD backend 'triton2'"):
        kernels.ssd_causal(**t, backend="triton2")
    with pytest.raises(ValueError, match="even number of heads"):
        kernels.ssd_bidirectional(**make_inputs(heads=3, groups=1))
    with pytest.raises(ValueError, match="unknown SSD form"):
        kernels.register_ssd_backend("diagonal", "x", kernels.ssd_causal)
    assert kernels.list_ssd_backends("noncausal")[:3] == ["auto", "chunked", "reference"]
