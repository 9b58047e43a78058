"""The shared 1D Mamba mixer (vssm.mamba1d.MambaMixer) against a step-by-step reference: both directions,
causal conv, one grouped scan call."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vssm import mamba1d
from vssm.mamba1d import MambaMixer

torch.set_num_threads(min(2, torch.get_num_threads()))


def sequential_direction(m: MambaMixer, x: torch.Tensor, suffix: str) -> torch.Tensor:
    """One direction of the mixer, token by token (before the z gate): ``(B, L, E)`` inner inputs in scan order
    -> scan outputs ``(B, L, E)``. Causal conv and recurrence written out as loops over time, float64."""
    conv = getattr(m, "conv1d" + suffix)
    x_proj, dt_proj = getattr(m, "x_proj" + suffix), getattr(m, "dt_proj" + suffix)
    A = -torch.exp(getattr(m, "A" + suffix + "_log").double())
    D = getattr(m, "D" + suffix).double()
    w, b = conv.weight.double()[:, 0], conv.bias.double()  # (E, k), (E,)
    k = w.shape[1]
    batch, L, E = x.shape
    h = x.new_zeros(batch, E, m.d_state, dtype=torch.float64)
    ys = []
    for t in range(L):
        # causal depthwise conv: taps on x[t - k + 1 .. t] (zeros before the start)
        c = b.expand(batch, E).clone()
        for j in range(k):
            s = t - (k - 1) + j
            if s >= 0:
                c = c + w[:, j] * x[:, s].double()
        u = F.silu(c)
        proj = u @ x_proj.weight.double().t()
        dt_low, Bt, Ct = proj.split([m.dt_rank, m.d_state, m.d_state], dim=-1)
        dt = F.softplus(dt_low @ dt_proj.weight.double().t() + dt_proj.bias.double())  # (batch, E)
        h = torch.exp(dt[..., None] * A) * h + (dt * u)[..., None] * Bt[:, None, :]
        ys.append((h * Ct[:, None, :]).sum(-1) + D * u)
    return torch.stack(ys, dim=1)


def sequential_mixer(m: MambaMixer, x: torch.Tensor) -> torch.Tensor:
    xz = x.double() @ m.in_proj.weight.double().t()
    xi, z = xz.chunk(2, dim=-1)
    y = sequential_direction(m, xi, "")
    if m.bidirectional:
        y = y + sequential_direction(m, xi.flip(1), "_b").flip(1)
        if m.divide_out:
            y = y / 2
    return (y * F.silu(z)) @ m.out_proj.weight.double().t()


def perturbed_mixer(**kwargs) -> MambaMixer:
    torch.manual_seed(0)
    m = MambaMixer(**kwargs)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p) * (p.std() if p.numel() > 1 else 1))
    return m


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_mixer_matches_sequential_reference(bidirectional, backend):
    m = perturbed_mixer(dim=24, d_state=8, bidirectional=bidirectional, backend=backend)
    x = torch.randn(2, 11, 24)
    with torch.no_grad():
        out = m(x)
    ref = sequential_mixer(m, x)
    assert out.shape == x.shape
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-4)


def test_official_parameter_names_and_shapes():
    m = MambaMixer(dim=192, bidirectional=True)  # Vim-tiny's mixer
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "in_proj.weight": (768, 192), "out_proj.weight": (192, 384),
        "conv1d.weight": (384, 1, 4), "conv1d.bias": (384,), "conv1d_b.weight": (384, 1, 4), "conv1d_b.bias": (384,),
        "x_proj.weight": (44, 384), "x_proj_b.weight": (44, 384),  # dt rank ceil(192 / 16) = 12, + 2 * 16
        "dt_proj.weight": (384, 12), "dt_proj.bias": (384,), "dt_proj_b.weight": (384, 12), "dt_proj_b.bias": (384,),
        "A_log": (384, 16), "A_b_log": (384, 16), "D": (384,), "D_b": (384,),
    }
    assert "conv1d_b.weight" not in MambaMixer(dim=192).state_dict()


def test_forward_direction_is_causal():
    m = perturbed_mixer(dim=16, d_state=4)
    x = torch.randn(1, 9, 16)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 4, 16)
    with torch.no_grad():
        a, b = m(x), m(x2)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-3


def test_bidirectional_flip_swaps_directions():
    """Reversing the sequence and swapping the two directions' parameters reverses the output."""
    m = perturbed_mixer(dim=16, d_state=4, bidirectional=True)
    swapped = perturbed_mixer(dim=16, d_state=4, bidirectional=True)
    sd = m.state_dict()
    backward_of = {"conv1d.weight": "conv1d_b.weight", "conv1d.bias": "conv1d_b.bias",
                   "x_proj.weight": "x_proj_b.weight", "dt_proj.weight": "dt_proj_b.weight",
                   "dt_proj.bias": "dt_proj_b.bias", "A_log": "A_b_log", "D": "D_b"}
    swap = dict(sd)
    for f, b in backward_of.items():
        swap[f], swap[b] = sd[b], sd[f]
    swapped.load_state_dict(swap)
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x.flip(1)).flip(1), m(x), atol=1e-5, rtol=1e-4)


def test_both_directions_in_one_grouped_scan(monkeypatch):
    calls = []
    real = mamba1d.kernels.selective_scan

    def spy(u, delta, A, B, C, **kwargs):
        calls.append((tuple(u.shape), tuple(B.shape)))
        return real(u, delta, A, B, C, **kwargs)

    monkeypatch.setattr(mamba1d.kernels, "selective_scan", spy)
    m = MambaMixer(dim=16, d_state=4, bidirectional=True)
    m(torch.randn(2, 5, 16))
    assert calls == [((2, 64, 5), (2, 2, 4, 5))]  # 2 directions x 32 inner channels, B/C per direction


def test_backward_and_dtype():
    m = MambaMixer(dim=16, d_state=4, bidirectional=True)
    x = torch.randn(2, 6, 16, requires_grad=True)
    m(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in m.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert m(x).dtype == torch.bfloat16


def test_bad_conv_kernel():
    with pytest.raises(ValueError, match="d_conv"):
        MambaMixer(dim=16, d_conv=0)
