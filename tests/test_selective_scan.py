"""kernels.selective_scan: chunked vs the sequential reference, gradients, dtypes and input errors."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vssm import kernels
from _helpers import load_tool
from vssm.kernels.reference import selective_scan_reference


def make_inputs(batch=2, groups=2, d=3, n=4, length=7, dtype=torch.float32, a_scale=1.0, requires_grad=False):
    channels = groups * d
    t = dict(
        u=torch.randn(batch, channels, length),
        delta=torch.randn(batch, channels, length) * 0.5,
        A=-torch.rand(channels, n) * a_scale - 0.01,
        B=torch.randn(batch, groups, n, length),
        C=torch.randn(batch, groups, n, length),
        D=torch.randn(channels),
        delta_bias=torch.randn(channels) * 0.5,
    )
    t = {k: v.to(dtype) for k, v in t.items()}
    if requires_grad:
        for v in t.values():
            v.requires_grad_(True)
    return t


@pytest.mark.parametrize("length", [1, 7, 64, 1000])
@pytest.mark.parametrize("n", [1, 16])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_chunked_matches_reference_forward_and_grad(length, n, groups):
    inputs = make_inputs(batch=1, groups=groups, d=2, n=n, length=length, requires_grad=True)
    outs, grads = [], []
    for backend in ("reference", "chunked"):
        y = kernels.selective_scan(**inputs, backend=backend)
        (g_y,) = [torch.linspace(-1, 1, y.numel()).view_as(y)]
        grads.append(torch.autograd.grad(y, list(inputs.values()), g_y))
        outs.append(y.detach())
    scale = outs[0].abs().max().clamp_min(1)
    assert (outs[0] - outs[1]).abs().max() <= 1e-5 * scale
    for name, g_ref, g_chk in zip(inputs, *grads):
        tol = 1e-4 * g_ref.abs().max().clamp_min(1)
        assert (g_ref - g_chk).abs().max() <= tol, name


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_gradcheck_float64(backend):
    inputs = make_inputs(batch=1, groups=2, d=2, n=3, length=9, dtype=torch.float64, requires_grad=True)
    fn = lambda *args: kernels.selective_scan(*args, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(inputs.values()))


def naive_scan(u, delta, A, B, C, D, delta_bias):
    """Scalar loops straight from the definition, float64."""
    u, delta, A, B, C, D, delta_bias = (t.double() for t in (u, delta, A, B, C, D, delta_bias))
    batch, channels, length = u.shape
    groups, n = B.shape[1], B.shape[2]
    per_group = channels // groups
    y = torch.zeros_like(u)
    for b in range(batch):
        for c in range(channels):
            g = c // per_group
            h = torch.zeros(n, dtype=torch.float64)
            for t in range(length):
                dt = torch.nn.functional.softplus(delta[b, c, t] + delta_bias[c])
                h = torch.exp(dt * A[c]) * h + dt * B[b, g, :, t] * u[b, c, t]
                y[b, c, t] = (C[b, g, :, t] * h).sum() + D[c] * u[b, c, t]
    return y


def test_reference_matches_definition():
    inputs = make_inputs(batch=2, groups=2, d=2, n=3, length=6, dtype=torch.float64)
    y = kernels.selective_scan(**inputs, backend="reference")
    assert torch.allclose(y, naive_scan(**inputs), atol=1e-12)


def test_long_sequence_strongly_negative_A_is_stable():
    inputs = make_inputs(batch=1, groups=1, d=2, n=16, length=3000, a_scale=200.0)
    inputs["delta"] += 3.0
    y_ref = kernels.selective_scan(**inputs, backend="reference")
    y_chk = kernels.selective_scan(**inputs, backend="chunked")
    assert torch.isfinite(y_chk).all()
    assert torch.allclose(y_ref, y_chk, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk", [1, 3, 16, 200])
def test_chunk_length_does_not_change_result(chunk):
    from vssm.kernels.chunked import selective_scan_chunked
    inputs = make_inputs(batch=2, groups=2, d=2, n=4, length=50, dtype=torch.float64)
    y_ref = kernels.selective_scan(**inputs, backend="reference")
    assert torch.allclose(selective_scan_chunked(**inputs, chunk=chunk), y_ref, atol=1e-10)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("block", [1, 7 * 2 * 6 * 16, 1 << 18])  # one step, blocks of 7 (the last shorter), one block
def test_inference_form_runs_narrow_steps_in_blocks(monkeypatch, dtype, tol, block):
    """Without autograd, steps narrower than SEQUENTIAL_WIDTH elements (batch * channels * N) run the plain
    recurrence in blocks of STEP_BLOCK elements, wider ones in chunks of chunk_length(L) with the carried state:
    both give the reference."""
    from vssm.kernels import chunked
    inputs = make_inputs(batch=2, groups=2, d=3, n=16, length=100, dtype=dtype, a_scale=5.0)
    y_ref = kernels.selective_scan(**inputs, backend="reference")
    picked = []
    monkeypatch.setattr(chunked, "chunk_length", lambda length: picked.append(length) or 10)
    monkeypatch.setattr(chunked, "STEP_BLOCK", block)
    for width, chunked_form in ((2 * 6 * 16 + 1, False), (2 * 6 * 16, True)):
        monkeypatch.setattr(chunked, "SEQUENTIAL_WIDTH", width)
        picked.clear()
        y = chunked.selective_scan_chunked(**inputs)
        assert picked == ([100] if chunked_form else [])
        assert (y - y_ref).abs().max() <= tol * y_ref.abs().max()


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
def test_low_precision_inputs_use_fp32_state(dtype, tol):
    inputs = make_inputs(batch=1, groups=2, d=4, n=16, length=300)
    low = {k: v.to(dtype) for k, v in inputs.items()}
    y_exact = kernels.selective_scan(**{k: v.to(dtype).double() for k, v in inputs.items()}, backend="reference")
    y = kernels.selective_scan(**low, backend="chunked")
    assert y.dtype == dtype
    assert torch.allclose(y.double(), y_exact, atol=tol * y_exact.abs().max().item(), rtol=0)


def test_optional_D_bias_and_softplus():
    inputs = make_inputs(dtype=torch.float64)
    u, delta = inputs["u"], inputs["delta"]
    y = kernels.selective_scan(u, delta.abs(), inputs["A"], inputs["B"], inputs["C"], delta_softplus=False)
    zeros = torch.zeros(u.shape[1], dtype=torch.float64)
    # delta_softplus=False with |delta| equals softplus(x) for x = log(exp(|delta|) - 1)
    pre = torch.log(torch.expm1(delta.abs()))
    y2 = kernels.selective_scan(u, pre, inputs["A"], inputs["B"], inputs["C"], zeros, zeros)
    assert torch.allclose(y, y2, atol=1e-10)
    y3 = kernels.selective_scan(**inputs, backend="chunked")
    y4 = kernels.selective_scan(u, delta, inputs["A"], inputs["B"], inputs["C"], D=None,
                                delta_bias=inputs["delta_bias"], backend="chunked")
    assert torch.allclose(y3 - y4, inputs["D"][:, None] * u, atol=1e-10)


def test_auto_picks_chunked_on_cpu():
    assert kernels.resolve_backend("auto", torch.device("cpu")) == "chunked"
    assert {"auto", "reference", "chunked"} <= set(kernels.list_backends())


def test_resolution_takes_the_dtype(monkeypatch):
    """A backend declares the dtypes it takes; "auto" and a named backend that does not take the dtype resolve to
    the best one that does (the float64 fallback of the Triton kernels)."""
    import importlib
    ss = importlib.import_module("vssm.kernels.selective_scan")
    monkeypatch.setattr(ss, "_BACKENDS", dict(ss._BACKENDS))
    monkeypatch.setattr(ss, "_OPAQUE_BACKWARD", set(ss._OPAQUE_BACKWARD))
    kernels.register_backend("fp32_only", selective_scan_reference, priority=99, dtypes=(torch.float32,))
    cpu = torch.device("cpu")
    assert kernels.resolve_backend("auto", cpu, torch.float32) == "fp32_only"
    assert kernels.resolve_backend("auto", cpu, torch.float64) == "chunked"
    assert kernels.resolve_backend("fp32_only", cpu, torch.float64) == "chunked"
    inputs = make_inputs(dtype=torch.float64)
    y = kernels.selective_scan(**inputs, backend="fp32_only")  # runs the chunked backend: float64 exact
    assert torch.allclose(y, selective_scan_reference(*inputs.values()), atol=1e-10, rtol=0)
    if "triton" in kernels.list_backends():
        cuda = torch.device("cuda")
        assert kernels.resolve_backend("auto", cuda, torch.bfloat16) == "triton"
        assert kernels.resolve_backend("auto", cuda, torch.float64) == "chunked"
        assert kernels.resolve_backend("triton", cuda, torch.float64) == "chunked"
        with pytest.raises(ValueError, match="runs on cuda"):  # the device is checked before the dtype
            kernels.resolve_backend("triton", cpu, torch.float64)


def test_unknown_backend_lists_valid_ones():
    with pytest.raises(ValueError, match="valid: auto.*chunked.*reference"):
        kernels.selective_scan(**make_inputs(), backend="cuda_magic")


@pytest.mark.parametrize("name,bad,match", [
    ("u", torch.randn(2, 6), "u and delta"),
    ("delta", torch.randn(2, 6, 8), "u and delta"),
    ("A", torch.randn(5, 4), "A must be"),
    ("B", torch.randn(2, 2, 4, 8), "B and C"),
    ("C", torch.randn(2, 2, 3, 7), "B and C"),
    ("B", torch.randn(2, 4, 4, 7), "not divisible"),
    ("D", torch.randn(7), "D must be"),
    ("delta_bias", torch.randn(6, 1), "delta_bias must be"),
])
def test_bad_shapes_name_the_offending_shapes(name, bad, match):
    inputs = make_inputs()
    inputs[name] = bad
    if name == "B":
        inputs["C"] = bad.clone()
    with pytest.raises(ValueError, match=match) as err:
        kernels.selective_scan(**inputs)
    assert f"{name}={tuple(bad.shape)}" in str(err.value)


def test_bad_dtypes():
    inputs = make_inputs()
    with pytest.raises(TypeError, match="share a dtype"):
        kernels.selective_scan(**{**inputs, "delta": inputs["delta"].double()})
    with pytest.raises(TypeError, match="floating-point"):
        kernels.selective_scan(**{**inputs, "u": inputs["u"].long()})


def test_flop_counter_uses_paper_formula():
    inputs = make_inputs(batch=2, groups=4, d=3, n=16, length=10)
    with FlopCounterMode(display=False) as counter:
        kernels.selective_scan(**inputs)
    batch, channels, length, n = 2, 12, 10, 16
    assert counter.get_total_flops() == 9 * batch * length * channels * n + batch * channels * length


def test_fake_tensor_shapes_under_meta():
    inputs = {k: v.to("meta") for k, v in make_inputs().items()}
    y = kernels.selective_scan(**inputs)
    assert y.device.type == "meta" and y.shape == inputs["u"].shape


# ---- kernels.scan2d on the PyTorch backends -----------------------------------------------------------------

@pytest.mark.parametrize("name,options,H,W", [("cross", {}, 3, 5), ("group", {}, 4, 3), ("atrous", {}, 5, 4),
                                              ("window", {"directions": ["h", "w2_flip", "v", "w7"]}, 5, 6)])
def test_scan2d_equals_flatten_scan_merge(name, options, H, W):
    from vssm import scans
    pattern = scans.build(name, **options)
    batch, channels, n = 2, 8, 3
    K, L = pattern.K, pattern.sequence_length(H, W)
    ck = pattern.channels_per_sequence(channels)
    x = torch.randn(batch, channels, H, W, dtype=torch.float64).to(memory_format=torch.channels_last)
    delta = torch.randn(batch, K * ck, L, dtype=torch.float64)
    A = -torch.rand(K * ck, n, dtype=torch.float64)
    B, C = torch.randn(2, batch, K, n, L, dtype=torch.float64)
    D, bias = torch.randn(2, K * ck, dtype=torch.float64)
    y = kernels.scan2d(x, delta, A, B, C, D, bias, pattern=pattern, backend="chunked")
    ys = selective_scan_reference(pattern.flatten(x).reshape(batch, K * ck, L), delta, A, B, C, D, bias, True)
    y_ref = pattern.merge(ys.view(batch, K, ck, L), (H, W))
    assert y.dtype == torch.float64 and torch.allclose(y, y_ref, atol=1e-10)
    y32 = kernels.scan2d(*(t.float() for t in (x, delta, A, B, C, D, bias)), pattern=name if not options else pattern)
    assert y32.dtype == torch.float32 and torch.allclose(y32.double(), y_ref, atol=1e-4)
    y16 = kernels.scan2d(*(t.float() for t in (x, delta, A, B, C, D, bias)), pattern=pattern,
                         out_dtype=torch.bfloat16)  # the float32 sum, rounded once
    assert y16.dtype == torch.bfloat16 and torch.equal(y16, y32.to(torch.bfloat16))


def test_scan2d_bad_inputs():
    from vssm import scans
    x = torch.randn(1, 4, 3, 3)
    L = 9
    ok = dict(delta=torch.randn(1, 16, L), A=-torch.rand(16, 1), B=torch.randn(1, 4, 1, L), C=torch.randn(1, 4, 1, L))
    with pytest.raises(KeyError, match="unknown scan pattern"):
        kernels.scan2d(x, **ok, pattern="zigzag-nope")
    with pytest.raises(ValueError, match=r"x must be a \(batch, C, H, W\)"):
        kernels.scan2d(x[0], **ok)
    with pytest.raises(ValueError, match="delta must be"):
        kernels.scan2d(x, **{**ok, "delta": torch.randn(1, 16, L + 1)})
    with pytest.raises(ValueError, match="B and C"):
        kernels.scan2d(x, **{**ok, "B": torch.randn(1, 2, 1, L)})
    with pytest.raises(ValueError, match="A must be"):
        kernels.scan2d(x, **{**ok, "A": -torch.rand(4, 1)})
    with pytest.raises(TypeError, match="share a dtype"):
        kernels.scan2d(x, **{**ok, "delta": ok["delta"].double()})
    with pytest.raises(ValueError, match="cannot be split"):
        kernels.scan2d(torch.randn(1, 6, 3, 3), **ok, pattern=scans.build("group"))
    with pytest.raises(ValueError, match="backend"):
        kernels.scan2d(x, **ok, backend="cuda-please")
    atrous = scans.build("atrous")  # its sequences each visit a quarter of the map
    L_atrous = atrous.sequence_length(3, 3)
    with pytest.raises(ValueError, match="per_sequence needs a pattern whose every sequence visits every position"):
        kernels.scan2d(x, **{**ok, "delta": torch.randn(1, 16, L_atrous), "B": torch.randn(1, 4, 1, L_atrous),
                             "C": torch.randn(1, 4, 1, L_atrous)}, pattern=atrous, per_sequence=True)
    # per_sequence: the K maps sum to the merged output
    maps = kernels.scan2d(x, **ok, per_sequence=True)
    assert maps.shape == (1, 4, 4, 3, 3) and torch.allclose(maps.sum(1), kernels.scan2d(x, **ok), atol=1e-5)
    low = torch.randn(1, 4, 2, L)
    with pytest.raises(ValueError, match=r"dt_proj must be \(K=4, C_k=4, R\)"):
        kernels.scan2d(x, **{**ok, "delta": low}, dt_proj=torch.randn(4, 3, 2))
    with pytest.raises(ValueError, match="delta is the low-rank"):
        kernels.scan2d(x, **ok, dt_proj=torch.randn(4, 4, 2))
    # the accepted form: low-rank (1, K, R, L) with (K, C_k, R) equals the projected delta
    proj = torch.randn(4, 4, 2)
    y = kernels.scan2d(x, **{**ok, "delta": low}, dt_proj=proj)
    y_ref = kernels.scan2d(x, **{**ok, "delta": torch.einsum("bkrl,kdr->bkdl", low, proj).reshape(1, 16, L)})
    assert torch.allclose(y, y_ref, atol=1e-5)


def test_benchmark_rejects_a_negative_dt_rank(capsys):
    """The scan2d benchmark refuses ``--dt-rank -1`` with a message, before it looks for a GPU."""
    with pytest.raises(SystemExit):
        load_tool("benchmark").main(["scan2d", "--dt-rank", "-1"])
    assert "argument --dt-rank: must be 0 or more, got -1" in capsys.readouterr().err


@pytest.mark.parametrize("form", ["no_grad", "autograd", "traced_loop"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_chunked_forms_match_reference_with_vanishing_decays(form, dtype, tol):
    """The in-place inference form, the autograd form and the ONNX-export form (loops as higher_order.scan) of the
    chunked backend against the reference, with decays far below exp(-80) (floored there: subnormals are slow)."""
    from vssm.kernels.chunked import selective_scan_chunked
    inputs = make_inputs(batch=2, groups=2, d=3, n=16, length=37, dtype=dtype, a_scale=60.0)
    y_ref = kernels.selective_scan(**inputs, backend="reference")
    if form == "autograd":
        inputs = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    with torch.set_grad_enabled(form == "autograd"):
        y = selective_scan_chunked(**inputs, traced_loop=form == "traced_loop")
    assert y.dtype == dtype and torch.isfinite(y).all()
    assert (y - y_ref).abs().max() <= tol * y_ref.abs().max()
