"""Sequential state-space-duality (SSD) forms in plain PyTorch: the ground truth the other SSD backends are tested
against (results in the compute dtype). Layout as in Mamba-2: ``x (b, L, H, P)``, ``dt (b, L, H)``, ``A (H,)``,
``B, C (b, L, G, N)``; head ``h`` reads group ``h // (H // G)`` of B and C."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .reference import compute_dtype


def prepare(x, dt, A, D, dt_bias, dt_softplus):
    """Shared preamble: ``x, dt, A, D`` in the compute dtype, ``dt = softplus(dt + dt_bias)`` (if asked)."""
    cdt = compute_dtype(x.dtype)
    dt = dt.to(cdt) + dt_bias.to(cdt)
    if dt_softplus:
        dt = F.softplus(dt)
    return x.to(cdt), dt, A.to(cdt), D.to(cdt)


def per_head(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``(b, L, G, N)`` -> ``(b, L, H, N)``: each group's row repeated for its ``H // G`` heads."""
    return t.repeat_interleave(heads // t.shape[2], dim=2)


def ssd_causal_reference(x, dt, A, B, C, D, dt_bias, dt_softplus=False, chunk_size=0):
    """``h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T``, ``y_t = C_t h_t + D x_t``, one step at a time
    (``chunk_size`` is ignored)."""
    x, dt, A, D = prepare(x, dt, A, D, dt_bias, dt_softplus)
    batch, length, heads, dim = x.shape
    B, C = per_head(B.to(x.dtype), heads), per_head(C.to(x.dtype), heads)
    state = x.new_zeros(batch, heads, B.shape[-1], dim)
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        state = decay * state + (dt[:, t, :, None] * B[:, t])[..., None] * x[:, t, :, None, :]
        ys.append(torch.einsum("bhn,bhnp->bhp", C[:, t], state))
    return torch.stack(ys, dim=1) + D[:, None] * x


def ssd_noncausal_reference(x, dt, A, B, C, D, dt_bias, dt_softplus=False, chunk_size=0):
    """VSSD's non-causal SSD: one state shared by every position, ``h = sum_s dt_s A B_s x_s^T``,
    ``y_t = C_t h + D x_t``; the state is summed one step at a time."""
    x, dt, A, D = prepare(x, dt, A, D, dt_bias, dt_softplus)
    batch, length, heads, dim = x.shape
    B, C = per_head(B.to(x.dtype), heads), per_head(C.to(x.dtype), heads)
    state = x.new_zeros(batch, heads, B.shape[-1], dim)
    for t in range(length):
        state = state + ((dt[:, t] * A)[..., None] * B[:, t])[..., None] * x[:, t, :, None, :]
    return torch.einsum("blhn,bhnp->blhp", C, state) + D[:, None] * x
