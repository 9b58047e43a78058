"""Sequential selective scan in plain PyTorch: the ground truth every other backend is tested against."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """State/accumulation dtype: float64 stays float64, everything else runs in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def discretize(u, delta, A, B, D, delta_bias, delta_softplus):
    """Shared preamble of the PyTorch backends.

    Returns ``dt (b, G*D, L)``, ``log_decay (b, G*D, L, N) = dt*A``, ``drive (b, G*D, L, N) = dt*B*u``
    and ``skip (b, G*D, L) = D*u``, all in the compute dtype.
    """
    cdt = compute_dtype(u.dtype)
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    u32 = u.to(cdt)
    dt = delta.to(cdt) + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    log_decay = dt[..., None] * A.to(cdt)[:, None, :]
    # B: (b, G, N, L) -> (b, G, 1, L, N), broadcast over the channels of each group.
    b_seq = B.to(cdt).transpose(2, 3).unsqueeze(2)
    drive = ((dt * u32).view(batch, groups, channels // groups, length, 1) * b_seq).reshape(
        batch, channels, length, n_state)
    skip = D.to(cdt)[:, None] * u32
    return dt, log_decay, drive, skip


def readout(states: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """``y[b, c, l] = sum_n states[b, c, l, n] * C[b, g(c), n, l]`` for states (b, G*D, L, N)."""
    batch, channels, length, n_state = states.shape
    groups = C.shape[1]
    c_seq = C.to(states.dtype).transpose(2, 3).unsqueeze(2)  # (b, G, 1, L, N)
    y = (states.view(batch, groups, channels // groups, length, n_state) * c_seq).sum(-1)
    return y.reshape(batch, channels, length)


def selective_scan_reference(u, delta, A, B, C, D, delta_bias, delta_softplus=True):
    """One step at a time over L; shapes as in :func:`vssm.kernels.selective_scan`."""
    _, log_decay, drive, skip = discretize(u, delta, A, B, D, delta_bias, delta_softplus)
    decay = log_decay.exp()
    h = torch.zeros_like(drive[:, :, 0])
    states = []
    for t in range(u.shape[-1]):
        h = decay[:, :, t] * h + drive[:, :, t]
        states.append(h)
    y = readout(torch.stack(states, dim=2), C) + skip
    return y.to(u.dtype)
