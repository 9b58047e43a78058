"""Triton kernels of the non-causal SSD (VSSD): ``h = B^T (w x)``, ``y = C h + D x`` with ``w = dt A`` per position
and head; shapes as in :mod:`vssm.kernels.ssd` (``x (b, L, H, P)``, ``B, C (b, L, G, N)``, state ``(b, H, N, P)``).

Two kernels, both one program per (batch x head, tile of the output) looping over the contracted dim in blocks:
``_state_kernel`` sums ``K^T V`` over L (``V`` optionally scaled by a per-(position, head) weight), and
``_readout_kernel`` forms ``Q S (+ D x)`` per position. The forward is state then read-out; the backward reuses
them: ``dS = C^T dy`` (state kernel), ``d(w x) = B dS`` (read-out kernel), with ``dB``, ``dC`` (a product per group
over the heads), ``dD`` and the ``dt`` / ``A`` / ``dt_bias`` chain in PyTorch (written out: the backward runs inside
the opaque op ``vssm::ssd_backward``, where autograd does not record). float32 accumulation for the input
dtypes in ``DTYPES`` (float64 resolves to the PyTorch backends). Launched on CUDA tensors (the ``triton``
backend), or on CPU tensors under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

__all__ = ["forward", "backward", "DTYPES"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # input dtypes the kernels take (float32 accumulation)


@triton.jit
def _state_kernel(K_ptr, V_ptr, W_ptr, S_ptr, L, H, N, P, heads_per_group,
                  sk_b, sk_l, sk_g, sv_b, sv_l, sv_h, sw_b, sw_l, sw_h,
                  HAS_W: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr):
    """``S[b, h] = sum_l K[b, l, g(h)]^T (w[b, l, h] V[b, l, h])``, S contiguous ``(b, H, N, P)`` float32."""
    pid_bh, pid_n, pid_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, h = pid_bh // H, pid_bh % H
    g = h // heads_per_group
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    acc = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        offs_l = l0 + tl.arange(0, BLOCK_L)
        m_l = offs_l < L
        k = tl.load(K_ptr + b * sk_b + offs_l[:, None] * sk_l + g * sk_g + offs_n[None, :],
                    mask=m_l[:, None] & (offs_n[None, :] < N), other=0.0).to(tl.float32)
        v = tl.load(V_ptr + b * sv_b + offs_l[:, None] * sv_l + h * sv_h + offs_p[None, :],
                    mask=m_l[:, None] & (offs_p[None, :] < P), other=0.0).to(tl.float32)
        if HAS_W:
            w = tl.load(W_ptr + b * sw_b + offs_l * sw_l + h * sw_h, mask=m_l, other=0.0).to(tl.float32)
            v = v * w[:, None]
        acc += tl.dot(tl.trans(k), v, input_precision="ieee")
    s = S_ptr + (pid_bh * N + offs_n[:, None]) * P + offs_p[None, :]
    tl.store(s, acc, mask=(offs_n[:, None] < N) & (offs_p[None, :] < P))


@triton.jit
def _readout_kernel(Q_ptr, S_ptr, X_ptr, D_ptr, Y_ptr, L, H, N, P, heads_per_group,
                    sq_b, sq_l, sq_g, sx_b, sx_l, sx_h,
                    HAS_D: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr):
    """``Y[b, l, h] = Q[b, l, g(h)] S[b, h] (+ D[h] X[b, l, h])``, Y contiguous ``(b, L, H, P)`` float32."""
    pid_bh, pid_l, pid_p = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, h = pid_bh // H, pid_bh % H
    g = h // heads_per_group
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    m_l, m_p = offs_l < L, offs_p < P
    acc = tl.zeros((BLOCK_L, BLOCK_P), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        m_n = offs_n < N
        q = tl.load(Q_ptr + b * sq_b + offs_l[:, None] * sq_l + g * sq_g + offs_n[None, :],
                    mask=m_l[:, None] & m_n[None, :], other=0.0).to(tl.float32)
        s = tl.load(S_ptr + (pid_bh * N + offs_n[:, None]) * P + offs_p[None, :],
                    mask=m_n[:, None] & m_p[None, :], other=0.0)
        acc += tl.dot(q, s, input_precision="ieee")
    if HAS_D:
        x = tl.load(X_ptr + b * sx_b + offs_l[:, None] * sx_l + h * sx_h + offs_p[None, :],
                    mask=m_l[:, None] & m_p[None, :], other=0.0).to(tl.float32)
        acc += tl.load(D_ptr + h).to(tl.float32) * x
    y = Y_ptr + ((b * L + offs_l[:, None]) * H + h) * P + offs_p[None, :]
    tl.store(y, acc, mask=m_l[:, None] & m_p[None, :])


def _blocks(N, P):
    return max(16, min(64, triton.next_power_of_2(N))), max(16, min(64, triton.next_power_of_2(P)))


def _state(K, V, W, heads):
    """``(b, H, N, P)`` float32 state from keys ``K (b, L, G, N)``, values ``V (b, L, H, P)``, weights ``W (b, L, H)``
    or None; last dims contiguous."""
    batch, length, _, dim = V.shape
    n = K.shape[-1]
    BN, BP = _blocks(n, dim)
    S = torch.empty(batch, heads, n, dim, device=V.device, dtype=torch.float32)
    Wt = W if W is not None else V
    sw = W.stride() if W is not None else (0, 0, 0)
    grid = (batch * heads, triton.cdiv(n, BN), triton.cdiv(dim, BP))
    _state_kernel[grid](K, V, Wt, S, length, heads, n, dim, heads // K.shape[2], K.stride(0), K.stride(1),
                        K.stride(2), V.stride(0), V.stride(1), V.stride(2), *sw,
                        HAS_W=W is not None, BLOCK_L=32, BLOCK_N=BN, BLOCK_P=BP)
    return S


def _readout(Q, S, X, D):
    """``(b, L, H, P)`` float32: ``Q S (+ D X)`` with ``Q (b, L, G, N)``, ``S (b, H, N, P)``, ``X (b, L, H, P)``."""
    batch, heads, n, dim = S.shape
    length = Q.shape[1]
    BN, BP = _blocks(n, dim)
    Y = torch.empty(batch, length, heads, dim, device=S.device, dtype=torch.float32)
    Xt = X if X is not None else Y
    grid = (batch * heads, triton.cdiv(length, 32), triton.cdiv(dim, BP))
    _readout_kernel[grid](Q, S, Xt, D if D is not None else S, Y, length, heads, n, dim, heads // Q.shape[2],
                          Q.stride(0), Q.stride(1), Q.stride(2), Xt.stride(0), Xt.stride(1), Xt.stride(2),
                          HAS_D=D is not None, BLOCK_L=32, BLOCK_N=BN, BLOCK_P=BP)
    return Y


def _weights(dt, A, dt_bias, dt_softplus):
    """``(w, steps)``: ``w = steps A`` (float32, ``(b, L, H)``), ``steps = softplus(dt + dt_bias)`` if asked."""
    steps = dt.float() + dt_bias.float()
    steps = F.softplus(steps) if dt_softplus else steps
    return steps * A.float(), steps


def _last_contiguous(*ts):
    return [t if t.stride(-1) == 1 else t.contiguous() for t in ts]


def forward(x, dt, A, B, C, D, dt_bias, dt_softplus=False, chunk_size=0):
    """Non-causal SSD forward; returns float32 ``(b, L, H, P)`` (``chunk_size`` is ignored)."""
    x, B, C = _last_contiguous(x, B, C)
    w, _ = _weights(dt, A, dt_bias, dt_softplus)
    return _readout(C, _state(B, x, w, x.shape[2]), x, D.float().contiguous())


def backward(grad_y, x, dt, A, B, C, D, dt_bias, dt_softplus=False, chunk_size=0):
    """Gradients ``(dx, ddt, dA, dB, dC, dD, ddt_bias)`` of :func:`forward`."""
    x, B, C, grad_y = _last_contiguous(x, B, C, grad_y)
    batch, length, heads, dim = x.shape
    groups = B.shape[2]
    w_, steps = _weights(dt, A, dt_bias, dt_softplus)
    w_ = w_.contiguous()
    state = _state(B, x, w_, heads)
    d_state = _state(C, grad_y, None, heads)  # sum_l C_l^T dy_l
    d_values = _readout(B, d_state, None, None)  # d(w x)_l = B_l dS
    dy32, x32 = grad_y.float(), x.float()
    dx = w_[..., None] * d_values + D.float()[:, None] * dy32
    dw = (x32 * d_values).sum(-1)
    dD = (dy32 * x32).sum(dim=(0, 1, 3))
    per_group = lambda t: t.reshape(batch, length, groups, heads // groups, -1).sum(3)  # noqa: E731
    dC = per_group(torch.einsum("blhp,bhnp->blhn", dy32, state))
    dB = per_group(torch.einsum("blhp,bhnp->blhn", x32 * w_[..., None], d_state))
    dA = (dw * steps).sum(dim=(0, 1))
    ddt = dw * A.float()
    if dt_softplus:  # softplus' = sigmoid
        ddt = ddt * torch.sigmoid(dt.float() + dt_bias.float())
    return dx, ddt, dA, dB, dC, dD, ddt.sum(dim=(0, 1))
