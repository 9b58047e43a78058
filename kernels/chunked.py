"""Chunk-parallel selective scan in plain PyTorch.

The sequence is cut into chunks of ``T`` steps. Three passes, each a short Python loop over tensors
that cover the whole batch:

1. inside every chunk at once, the recurrence from a zero state (``T`` steps, all chunks in parallel);
2. across chunks, the carried state ``H_{c+1} = P_c * H_c + h_end_c`` (``L / T`` steps), where ``P_c`` is
   the chunk's total decay ``exp(sum a)``;
3. the carried state's contribution ``C_t . (exp(S_t) * H_c)`` with ``S_t`` the in-chunk cumulative sum
   of the log decay ``a = dt * A``.

Only decays ``exp(a) <= 1`` and ``exp(S_t) <= 1`` are ever formed (for A <= 0), so strongly negative A and
long L cannot overflow. With ``T ~ sqrt(L)`` the loops run about ``2 sqrt(L)`` steps instead of ``L``. Without
autograd, narrow steps with N > 1 (few channels and states per step, e.g. batch 1) run the plain recurrence in
cache-sized blocks of steps instead (:func:`_sequential_no_grad`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .reference import compute_dtype, discretize, readout

try:  # torch >= 2.5: a loop as one higher-order op (exported to ONNX as one Scan node)
    from torch._higher_order_ops.scan import scan as _scan_op
except ImportError:  # pragma: no cover
    _scan_op = None


def log_floor(dtype: torch.dtype) -> float:
    """Lower bound put on every log-decay before ``exp``: ``exp`` of it is still a normal number (float32's
    smallest is ``exp(-87.3)``, float64's ``exp(-708)``). Decays below it are zero to working precision anyway,
    but ``exp`` and products that go subnormal run far slower on x86 CPUs (docs/performance.md)."""
    return -700.0 if dtype == torch.float64 else -80.0


# per-step elements (batch * channels * N) below which the inference form with N > 1 runs the plain recurrence in
# blocks of steps of at most STEP_BLOCK elements, which stay in cache (docs/performance.md)
SEQUENTIAL_WIDTH = 32768
STEP_BLOCK = 1 << 18


def chunk_length(length: int) -> int:
    """Chunk size balancing the in-chunk and across-chunk loops (at most 64)."""
    return max(1, min(64, math.isqrt(max(length - 1, 0)) + 1))


def _recurrence_step(h: torch.Tensor, xs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    h = xs[0] * h + xs[1]
    return h, h.clone()


def linear_recurrence(decay: torch.Tensor, drive: torch.Tensor, dim: int, traced_loop: bool = False) -> torch.Tensor:
    """All states ``h_t = decay_t * h_{t-1} + drive_t`` (``h_{-1} = 0``) along ``dim``; ``decay`` and ``drive`` of
    one shape, the result too.

    ``traced_loop``: run the loop as one ``torch.ops.higher_order.scan`` (exported to ONNX as one ``Scan`` node)
    instead of a Python loop (unrolled into ``2 * steps`` nodes when traced). It scans ``(steps, M)`` matrices
    with a carry of exactly the per-step shape ``(M,)``, so that the combine function broadcasts nothing, whatever
    sizes dynamo traces it with, and both calls of :func:`selective_scan_chunked` trace the same ranks."""
    if traced_loop:
        steps, shape = drive.shape[dim], drive.movedim(dim, 0).shape
        decay, drive = (t.movedim(dim, 0).reshape(steps, -1) for t in (decay, drive))
        states = _scan_op(_recurrence_step, torch.zeros_like(drive[0]), (decay, drive))[1]
        return states.view(shape).movedim(0, dim)
    h = torch.zeros_like(drive.select(dim, 0))
    states = []
    for t in range(drive.shape[dim]):
        h = decay.select(dim, t) * h + drive.select(dim, t)
        states.append(h)
    return torch.stack(states, dim=dim)


def selective_scan_chunked(u, delta, A, B, C, D, delta_bias, delta_softplus=True, chunk=None, traced_loop=False):
    """Shapes as in :func:`vssm.kernels.selective_scan`; ``chunk`` overrides the chunk length; ``traced_loop`` see
    :func:`linear_recurrence` (the form :func:`vssm.kernels.selective_scan` takes under ``torch.onnx.export``).

    Without autograd (inference, and the forward of the custom op) the in-place form
    :func:`_chunked_no_grad` runs; autograd and tracing take the functional form below."""
    needs_graph = traced_loop or (torch.is_grad_enabled() and any(
        t.requires_grad for t in (u, delta, A, B, C, D, delta_bias)))
    narrow = 1 < A.shape[1] and u.shape[0] * u.shape[1] * A.shape[1] < SEQUENTIAL_WIDTH
    if not needs_graph and chunk is None and narrow:
        return _sequential_no_grad(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if not needs_graph:
        return _chunked_no_grad(u, delta, A, B, C, D, delta_bias, delta_softplus, chunk)
    batch, channels, length = u.shape
    n_state = A.shape[1]
    _, log_decay, drive, skip = discretize(u, delta, A, B, D, delta_bias, delta_softplus)
    floor = log_floor(log_decay.dtype)
    log_decay = log_decay.clamp(min=floor)
    T = chunk or chunk_length(length)
    n_chunks = -(-length // T)
    pad = n_chunks * T - length
    if pad:  # zero log-decay and zero drive at the end leave every real step unchanged
        log_decay = F.pad(log_decay, (0, 0, 0, pad))
        drive = F.pad(drive, (0, 0, 0, pad))
    log_decay = log_decay.view(batch, channels, n_chunks, T, n_state)
    drive = drive.view(batch, channels, n_chunks, T, n_state)

    # 1. in-chunk recurrence from a zero state, all chunks in parallel
    local = linear_recurrence(log_decay.exp(), drive, 3, traced_loop)  # (b, GD, nc, T, N)

    # 2. state carried into each chunk
    cum = log_decay.cumsum(dim=3).clamp(min=floor)  # S_t, inclusive
    chunk_decay = cum[:, :, :, -1].exp()  # (b, GD, nc, N)
    # the state entering chunk c: the recurrence over chunks, shifted by one (chunk 0 starts from zero)
    carry = linear_recurrence(chunk_decay, local[:, :, :, -1], 2, traced_loop)[:, :, :-1]
    carry = F.pad(carry, (0, 0, 1, 0))  # (b, GD, nc, N)

    # 3. full states = local + decayed carry; read out with C
    states = local + cum.exp() * carry[:, :, :, None, :]
    states = states.reshape(batch, channels, n_chunks * T, n_state)[:, :, :length]
    y = readout(states, C) + skip
    return y.to(u.dtype)


def _chunked_no_grad(u, delta, A, B, C, D, delta_bias, delta_softplus, chunk=None):
    """The chunked scan in two buffers of ``L * channels * N`` elements, updated in place (no autograd).

    Layout ``(T, batch, G, n_chunks, N, D)``: step t of every chunk is one contiguous block, so each step of the
    in-chunk loop is one ``addcmul_`` over all chunks, states and channels; the channels of a group are the
    innermost axis, so the broadcasts ``dt_d A_dn`` and ``x_d B_n`` run along contiguous rows, and the read-out
    by C is one batched vector-matrix product per (step, chunk). The carried state's contribution
    ``exp(A S_t) * H_c`` uses the in-chunk cumulative step size ``S_t``; every exponent is floored at
    :func:`log_floor`."""
    cdt = compute_dtype(u.dtype)
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    d = channels // groups
    T = chunk or chunk_length(length)
    n_chunks = -(-length // T)
    pad = n_chunks * T - length
    floor = log_floor(cdt)
    u32 = u.to(cdt)
    dt = delta.to(cdt) + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)

    def steps_first(t):  # (batch, G, X, L) -> (T, batch, G, n_chunks, 1, X), zero-padded at the end
        t = F.pad(t, (0, pad)) if pad else t
        return t.reshape(batch, groups, t.shape[2], n_chunks, T).permute(4, 0, 1, 3, 2).unsqueeze(-2).contiguous()

    dt_c = steps_first(dt.view(batch, groups, d, length))  # padding: dt = 0, so decay 1 and drive 0
    x_c = steps_first((dt * u32).view(batch, groups, d, length))
    b_c, c_c = steps_first(B.to(cdt)), steps_first(C.to(cdt))  # (T, batch, G, n_chunks, 1, N)
    a = A.to(cdt).view(groups, 1, d, n_state).transpose(-1, -2).contiguous()  # (G, 1, N, D)

    # 1. in-chunk recurrence from a zero state, in place: h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t
    decay = torch.mul(dt_c, a).clamp_(min=floor).exp_()  # (T, batch, G, n_chunks, N, D)
    h = torch.mul(x_c, b_c.transpose(-1, -2))
    for t in range(1, T):
        h[t].addcmul_(decay[t], h[t - 1])

    # 2. state entering each chunk: H_{c+1} = exp(A S_end) H_c + h_end_c
    torch.mul(dt_c.cumsum(0), a, out=decay).clamp_(min=floor).exp_()  # the decay buffer now holds exp(A S_t)
    carry = torch.zeros_like(h[0])  # (batch, G, n_chunks, N, D)
    for c in range(1, n_chunks):
        torch.addcmul(h[-1, :, :, c - 1], decay[-1, :, :, c - 1], carry[:, :, c - 1], out=carry[:, :, c])

    # 3. full states, read out with C
    h.addcmul_(decay, carry)
    y = torch.matmul(c_c, h).squeeze(-2)  # (T, batch, G, n_chunks, D)
    y = y.permute(1, 2, 4, 3, 0).reshape(batch, channels, n_chunks * T)[:, :, :length]
    return y.addcmul(D.to(cdt)[:, None], u32).to(u.dtype)


def _sequential_no_grad(u, delta, A, B, C, D, delta_bias, delta_softplus):
    """The plain recurrence without autograd, for narrow steps with N > 1 (``batch * channels * N <
    SEQUENTIAL_WIDTH``, e.g. batch 1): one ``addcmul_`` per step, over blocks of ``S`` steps whose decays and states
    (``S * batch * channels * N <= STEP_BLOCK`` elements each) stay in cache; nothing of ``L * channels * N``
    elements is formed. Layout ``(steps, batch, G, N, D)`` as :func:`_chunked_no_grad`'s; every exponent floored at
    :func:`log_floor`."""
    cdt = compute_dtype(u.dtype)
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], B.shape[2]
    d = channels // groups
    floor = log_floor(cdt)
    u32 = u.to(cdt)
    dt = delta.to(cdt) + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)

    def steps_first(t):  # (batch, G, X, L) -> (L, batch, G, 1, X)
        return t.permute(3, 0, 1, 2).unsqueeze(-2).contiguous()

    dt_s = steps_first(dt.view(batch, groups, d, length))
    x_s = steps_first((dt * u32).view(batch, groups, d, length))
    b_s, c_s = steps_first(B.to(cdt)).transpose(-1, -2), steps_first(C.to(cdt))  # (L, b, G, N, 1), (L, b, G, 1, N)
    a = A.to(cdt).view(groups, d, n_state).transpose(-1, -2).contiguous()  # (G, N, D)
    S = max(1, min(length, STEP_BLOCK // max(1, batch * channels * n_state)))  # an empty batch: one block
    decay = torch.empty(S, batch, groups, n_state, d, dtype=cdt, device=u.device)
    h = torch.empty_like(decay)
    carry = torch.zeros_like(h[0])  # the state before the block
    y = torch.empty(length, batch, groups, 1, d, dtype=cdt, device=u.device)
    for s0 in range(0, length, S):
        n = min(S, length - s0)
        dec, hs = decay[:n], h[:n]
        torch.mul(dt_s[s0:s0 + n], a, out=dec).clamp_(min=floor).exp_()
        torch.mul(x_s[s0:s0 + n], b_s[s0:s0 + n], out=hs)
        hs[0].addcmul_(dec[0], carry)
        for t in range(1, n):
            hs[t].addcmul_(dec[t], hs[t - 1])
        torch.matmul(c_s[s0:s0 + n], hs, out=y[s0:s0 + n])
        carry.copy_(hs[n - 1])
    y = y.squeeze(-2).permute(1, 2, 3, 0).reshape(batch, channels, length)
    return y.addcmul(D.to(cdt)[:, None], u32).to(u.dtype)
