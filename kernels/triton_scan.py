"""Selective scan in Triton: forward and backward for the grouped layout of :func:`vssm.kernels.selective_scan`, and
the same kernels over a 2D map for :func:`vssm.kernels.scan2d`.

Layout (all contiguous along L): ``u, delta (batch, G*D, L)`` (delta with any batch / channel strides, e.g. the
``(G*D, batch, L)`` memory of a projection), ``A (G*D, N)``, ``B, C (batch, G, N, L)``, ``D, delta_bias (G*D,)``.
For ``scan2d`` (GATHER) ``u`` and ``y`` are instead 2D maps read and accumulated through a scan pattern's index
map, or ``y`` is K per-sequence maps written without a sum (PER_SEQ); see "Addressing" below.

One program owns ``BLOCK_D`` channels of one (batch, group) and walks the sequence in chunks of ``BLOCK_L``
steps; inside a chunk the recurrence is an associative scan over the pairs ``(decay, drive)``, and the state
(``BLOCK_D x N``, fp32) is carried from chunk to chunk in registers. Inputs are read once and ``y`` is written
once, so the forward moves the bytes of ``u, delta, B, C, y`` and nothing else.

The backward needs the state at every chunk start (``batch*G*D*N*ceil(L/BLOCK_L)`` floats, 1/BLOCK_L of the
states): the forward stores them when asked (the fused 2D op does when a gradient is needed), else pass 1 of the
backward recomputes them. Pass 2 walks the chunks backward, rebuilds the states of the chunk from its start
state and runs the adjoint recurrence ``g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}`` as a reverse scan.
``dB``/``dC`` are sums over the channels of a group, written per block of channels and reduced by PyTorch, as
are the per-batch partial sums ``dA``, ``dD``, ``ddelta_bias``.

Math (per channel c, state n): ``a_t = dt_t A_n``, ``h_t = exp(a_t) h_{t-1} + dt_t u_t B_t``,
``y_t = sum_n C_t h_t + D u_t``. Gradients with ``x_t = dt_t u_t``:
``dB_t = sum_c g_t x_t``, ``dC_t = sum_c dy_t h_t``, ``da_t = g_t exp(a_t) h_{t-1} = g_t (h_t - x_t B_t)``,
``dA = sum_t da_t dt_t``, ``ddt_t = (sum_n g_t B_t) u_t + sum_n da_t A_n``,
``du_t = (sum_n g_t B_t) dt_t + D dy_t``; softplus' derivative is the sigmoid.

Public functions: :func:`forward`, :func:`backward` (registered as backend ``"triton"`` of
``torch.ops.vssm.selective_scan`` by kernels/selective_scan.py), :func:`scan2d_forward`, :func:`scan2d_backward`
(the ``vssm::scan2d`` ops of kernels/scan2d.py); launch configs from :func:`pick_config`, overridden for a block
of code by :func:`launch_config` (tests, benchmark sweeps). The kernels take float32, float16 and bfloat16
(:data:`DTYPES`); the dispatcher sends float64 to the chunked PyTorch backend.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .step_sizes import project_step_sizes, rank_padded_operands, steps_from_operands

__all__ = ["forward", "backward", "scan2d_forward", "scan2d_backward", "pick_config", "launch_config",
           "state_chunk", "states_shape", "DTYPES"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # input dtypes the kernels take (state in float32)


# ----------------------------------------------------------------------------------------------------------
# Triton helpers
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _affine_combine(a_l, b_l, a_r, b_r):
    """Compose two steps ``h -> a h + b``: earlier (l) first, then later (r)."""
    return a_l * a_r, b_l * a_r + b_r


@triton.jit
def _adjoint_combine(f_r, m_r, s_r, f_l, m_l, s_l):
    """Combine for the reverse scan of ``g_t = b_t + alpha_{t+1} g_{t+1}``.

    A segment [i..j] is summarised by (f, m, s): f = alpha_i (its first decay), and
    ``g_i = s + m * alpha_{j+1} g_{j+1}``. In a reverse scan the accumulated later segment (r) comes first.
    """
    k = m_l * f_r
    return f_l, k * m_r, s_l + k * s_r


@triton.jit
def _softplus(x):
    e = tl.exp(x)
    series = e * (1.0 - e * (0.5 - e * 0.3333333333333333))  # log1p(e) for tiny e, where 1 + e rounds
    return tl.where(x > 20.0, x, tl.where(x < -5.0, series, tl.log(1.0 + e)))


@triton.jit
def _sigmoid(x):
    e = tl.exp(x)
    return tl.where(x > 20.0, 1.0, e / (1.0 + e))


@triton.jit
def _step_size(pre, mask, SOFTPLUS: tl.constexpr):
    """dt = softplus(pre) (or pre), zero outside ``mask``."""
    if SOFTPLUS:
        dt = _softplus(pre)
    else:
        dt = pre
    return tl.where(mask, dt, 0.0)


@triton.jit
def _chunk_scan(pre, u, Bt, A2, mask, SOFTPLUS: tl.constexpr):
    """One chunk from a zero state: ``(dt, alpha = exp(dt A), x = dt u, x B, sa, sb)`` with (sa, sb) the
    in-chunk composition of the steps ``h -> alpha h + x B``, so that ``h_t = sb_t + sa_t h_start``."""
    dt = _step_size(pre, mask, SOFTPLUS)
    x = dt * u
    alpha, xB, sa, sb = _row_scan(dt, x, Bt, A2)
    return dt, alpha, x, xB, sa, sb


@triton.jit
def _row_scan(dt, x, Bt, A2):
    """``(alpha = exp(dt A), x B, sa, sb)`` of one chunk of (channel, state) rows from their step sizes ``dt``
    and inputs ``x = dt u`` (see :func:`_chunk_scan`)."""
    alpha = tl.exp2(dt * A2[:, None])
    xB = x * Bt
    sa, sb = tl.associative_scan((alpha, xB), 1, _affine_combine)
    return alpha, xB, sa, sb


# ----------------------------------------------------------------------------------------------------------
# Tiles are 2D: one row per (channel, state) pair, r = d * NP + n, and BLOCK_L steps along the sequence. With
# N = 1 a row is a channel; with N > 1 the NP rows of a channel are summed for y (and du, ddelta).
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _chan_sum(x, BLOCK_D: tl.constexpr, NP: tl.constexpr, BLOCK_L: tl.constexpr):
    """(BLOCK_D*NP, BLOCK_L) per-row values -> (BLOCK_D, BLOCK_L) summed over the states of each channel."""
    if NP == 1:
        return x
    else:
        return tl.sum(tl.reshape(x, (BLOCK_D, NP, BLOCK_L)), axis=1)


@triton.jit
def _group_sum(x, BLOCK_D: tl.constexpr, NP: tl.constexpr, BLOCK_L: tl.constexpr):
    """(BLOCK_D*NP, BLOCK_L) per-row values -> (NP, BLOCK_L) summed over the channels of the program."""
    if NP == 1:
        return tl.sum(x, axis=0)[None, :]
    else:
        return tl.sum(tl.reshape(x, (BLOCK_D, NP, BLOCK_L)), axis=0)


@triton.jit
def _per_row(x, BLOCK_D: tl.constexpr, NP: tl.constexpr, BLOCK_L: tl.constexpr):
    """(BLOCK_D, BLOCK_L) per-channel values -> (BLOCK_D*NP, BLOCK_L), repeated for the states of each channel."""
    if NP == 1:
        return x
    else:
        return tl.reshape(tl.broadcast_to(x[:, None, :], (BLOCK_D, NP, BLOCK_L)), (BLOCK_D * NP, BLOCK_L))


@triton.jit
def _per_state(x, BLOCK_D: tl.constexpr, NP: tl.constexpr, BLOCK_L: tl.constexpr):
    """(NP, BLOCK_L) per-state values (B, C) -> (BLOCK_D*NP, BLOCK_L), repeated for each channel."""
    return tl.reshape(tl.broadcast_to(x[None, :, :], (BLOCK_D, NP, BLOCK_L)), (BLOCK_D * NP, BLOCK_L))


@triton.jit
def _tile(pid_d, pid_bg, L, DG, G, N, sd_b, sd_c, NP: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per-row indices of a program's tile (``sd_b``, ``sd_c``: batch and channel strides of delta / ddelta)."""
    g = pid_bg % G
    b = (pid_bg // G).to(tl.int64)
    r = tl.arange(0, BLOCK_D * NP)
    n = r % NP
    offs_d = pid_d * BLOCK_D + r // NP
    mask_r = (offs_d < DG) & (n < N)
    chan = g * DG + offs_d  # channel within G*D
    seq = (pid_bg - g) * DG + chan  # b*G*D + chan: the sequence index (rows of the states, u/y in the 1D layout)
    row_off = b * sd_b + chan.to(tl.int64) * sd_c  # row of delta
    bc_off = (pid_bg.to(tl.int64) * N + n) * L  # row of B/C of (b, g, n)
    # channel-level rows of delta / ddelta for N > 1
    dd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_c = dd < DG
    chan_off = b * sd_b + (g * DG + dd).to(tl.int64) * sd_c
    return n, mask_r, chan, seq, row_off, bc_off, mask_c, chan_off


# ----------------------------------------------------------------------------------------------------------
# Addressing of u / y (and du / dy). Both kernels read u and write y through (row base, position) pairs:
#   1D layout (selective_scan): u, y (batch, G*D, L) contiguous; row = seq * L, position = l.
#   2D layout (scan2d, GATHER): u (batch, C, H, W) and y (batch, C, H, W) with any strides; sequence g of
#   batch b reads channel ``g*D + d`` (SPLIT patterns) or ``d`` (every sequence sees all C = D channels) at
#   flat position ``p = idx[g, l]`` (``h = p // W``, ``w = p % W``; ``p < 0`` is a padding token: u = 0 there
#   and its output is dropped). Outputs of the K sequences land on the same (channel, position) unless SPLIT,
#   so y / du are accumulated with fp32 atomics. PER_SEQ: y / dy are K maps ``(batch, K, C_k, H, W)`` instead,
#   sequence g writing (reading) map g, channel d, with plain stores: nothing is summed.
#   Deterministic mode (``torch.use_deterministic_algorithms(True)``): no float atomics. y goes through the PER_SEQ
#   path into K float32 maps (split patterns: into the one map, whose channels the sequences share out), du
#   (DETERMINISTIC) into map g at ``g * sdu_g``; the maps are summed afterwards in a fixed order.
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _rows(pid_bg, G, DG, d, s_b, s_c, s_g, GATHER: tl.constexpr, SPLIT: tl.constexpr):
    """Row base offsets of channels ``d`` (within the group) of program (b, g) in a u- or y-like tensor
    (``s_g``: stride between the per-sequence maps of a PER_SEQ output, else 0)."""
    g = pid_bg % G
    b = pid_bg // G
    if GATHER and not SPLIT:
        xc = d
    else:
        xc = g * DG + d
    return b.to(tl.int64) * s_b + g.to(tl.int64) * s_g + xc.to(tl.int64) * s_c


@triton.jit
def _positions(idx_ptr, g, offs_l, L, W_img, su_h, su_w, sy_h, sy_w, GATHER: tl.constexpr):
    """(u offsets, y offsets, valid) of sequence steps ``offs_l`` of sequence ``g``."""
    inside = (offs_l >= 0) & (offs_l < L)
    if GATHER:
        p = tl.load(idx_ptr + g.to(tl.int64) * L + offs_l, mask=inside, other=-1)
        valid = inside & (p >= 0)
        p = tl.where(valid, p, 0)  # int32: a 32-bit division (64-bit division is emulated, and slow)
        h = p // W_img
        w = (p - h * W_img).to(tl.int64)
        h = h.to(tl.int64)
        return h * su_h + w * su_w, h * sy_h + w * sy_w, valid
    else:
        return offs_l, offs_l, inside


@triton.jit
def _load_delta(delta_ptr, row_off, offs_l, mask2d):
    """float32 delta (before bias and softplus) of a (rows, steps) tile of ``delta (batch, G*D, L)``."""
    return tl.load(delta_ptr + row_off[:, None] + offs_l[None, :], mask=mask2d, other=0.0).to(tl.float32)


# ----------------------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _fwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, idx_ptr, state_ptr,
                L, DG, G, N, NCHUNK, W_img, sd_b, sd_c, su_b, su_c, su_h, su_w, sy_b, sy_g, sy_c, sy_h, sy_w,
                SOFTPLUS: tl.constexpr, GATHER: tl.constexpr, SPLIT: tl.constexpr, PER_SEQ: tl.constexpr,
                STORE_STATES: tl.constexpr,
                STATE_CHUNK: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    """u, delta, the step sizes, D u and y are handled per channel (BLOCK_D rows), B and C per state (NP rows),
    and only the recurrence per (channel, state) row."""
    pid_bg = tl.program_id(1)
    g = pid_bg % G
    n, mask_r, chan, seq, _row_off, _bc_off, mask_c, chan_off = _tile(
        tl.program_id(0), pid_bg, L, DG, G, N, sd_b, sd_c, NP, BLOCK_D)
    dd = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    A2 = tl.load(A_ptr + chan * N + n, mask=mask_r, other=0.0).to(tl.float32) * 1.4426950408889634
    Dv = tl.load(D_ptr + g * DG + dd, mask=mask_c, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + g * DG + dd, mask=mask_c, other=0.0).to(tl.float32)
    u_row = _rows(pid_bg, G, DG, dd, su_b, su_c, 0, GATHER, SPLIT)
    y_row = _rows(pid_bg, G, DG, dd, sy_b, sy_c, sy_g, GATHER, SPLIT and not PER_SEQ)

    ar = tl.arange(0, BLOCK_L)
    last = (ar == BLOCK_L - 1)[None, :]
    n_idx = tl.arange(0, NP)
    bc_ptrs = (pid_bg.to(tl.int64) * N + n_idx)[:, None] * L + ar[None, :]  # (NP, BLOCK_L) of B / C
    mask_n = (n_idx < N)[:, None]
    upos, ypos_nx, valid_nx = _positions(idx_ptr, g, ar, L, W_img, su_h, su_w, sy_h, sy_w, GATHER)
    m = mask_c[:, None] & (ar < L)[None, :]
    u_nx = tl.load(u_ptr + u_row[:, None] + upos[None, :], mask=mask_c[:, None] & valid_nx[None, :], other=0.0)
    d_nx = _load_delta(delta_ptr, chan_off, ar, m)
    b_nx = tl.load(B_ptr + bc_ptrs, mask=mask_n & (ar < L)[None, :], other=0.0)
    c_nx = tl.load(C_ptr + bc_ptrs, mask=mask_n & (ar < L)[None, :], other=0.0)
    h = tl.zeros((BLOCK_D * NP,), dtype=tl.float32)
    # the backward's chunk-start states (every STATE_CHUNK steps), which spare it a recomputing pass
    state_off = seq.to(tl.int64) * NCHUNK * NP + n
    if STORE_STATES:
        tl.store(state_ptr + state_off, h, mask=mask_r)
    for l0 in range(0, L, BLOCK_L):
        u = u_nx.to(tl.float32)
        pre = d_nx.to(tl.float32) + bias[:, None]
        Bt = _per_state(b_nx.to(tl.float32), BLOCK_D, NP, BLOCK_L)
        Ct = _per_state(c_nx.to(tl.float32), BLOCK_D, NP, BLOCK_L)
        ypos = ypos_nx
        valid = valid_nx
        offs_l = l0 + ar
        mask_cl = mask_c[:, None] & (offs_l < L)[None, :]
        # prefetch the next chunk while this one is scanned
        nxt = offs_l + BLOCK_L < L
        upos, ypos_nx, valid_nx = _positions(idx_ptr, g, offs_l + BLOCK_L, L, W_img, su_h, su_w, sy_h, sy_w,
                                             GATHER)
        u_nx = tl.load(u_ptr + u_row[:, None] + upos[None, :], mask=mask_c[:, None] & valid_nx[None, :],
                       other=0.0)
        d_nx = _load_delta(delta_ptr, chan_off, (l0 + BLOCK_L) + ar, mask_c[:, None] & nxt[None, :])
        b_nx = tl.load(B_ptr + bc_ptrs + (l0 + BLOCK_L), mask=mask_n & nxt[None, :], other=0.0)
        c_nx = tl.load(C_ptr + bc_ptrs + (l0 + BLOCK_L), mask=mask_n & nxt[None, :], other=0.0)
        dt = _step_size(pre, mask_cl, SOFTPLUS)
        _alpha, _xB, sa, sb = _row_scan(_per_row(dt, BLOCK_D, NP, BLOCK_L), _per_row(dt * u, BLOCK_D, NP, BLOCK_L),
                                        Bt, A2)
        hs = sb + sa * h[:, None]
        if STORE_STATES:  # h after step l starts state chunk (l + 1) / STATE_CHUNK
            ends = ((offs_l + 1) % STATE_CHUNK == 0) & (offs_l + 1 < L)
            tl.store(state_ptr + state_off[:, None] + ((offs_l + 1) // STATE_CHUNK * NP)[None, :], hs,
                     mask=mask_r[:, None] & ends[None, :])
        y = _chan_sum(hs * Ct, BLOCK_D, NP, BLOCK_L) + Dv[:, None] * u
        y_ptrs = y_ptr + y_row[:, None] + ypos[None, :]
        y_store_mask = mask_c[:, None] & valid[None, :]
        if GATHER and not PER_SEQ:
            tl.atomic_add(y_ptrs, y, mask=y_store_mask, sem="relaxed")
        else:
            tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=y_store_mask)
        h = tl.sum(tl.where(last, hs, 0.0), axis=1)


# ----------------------------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------------------------
@triton.jit
def _bwd_kernel(u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, dy_ptr, idx_ptr,
                du_ptr, ddelta_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr, state_ptr,
                L, DG, G, N, NCHUNK, W_img, sd_b, sd_c, su_b, su_c, su_h, su_w, sy_b, sy_g, sy_c, sy_h, sy_w, sdu_g,
                SOFTPLUS: tl.constexpr, GATHER: tl.constexpr, SPLIT: tl.constexpr, PER_SEQ: tl.constexpr,
                HAVE_STATES: tl.constexpr, DETERMINISTIC: tl.constexpr,
                PREFETCH: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr):
    pid_bg = tl.program_id(1)
    g = pid_bg % G
    n, mask_r, chan, seq, row_off, bc_off, mask_c, chan_off = _tile(
        tl.program_id(0), pid_bg, L, DG, G, N, sd_b, sd_c, NP, BLOCK_D)
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D * NP) // NP
    dd = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    chan_c = g * DG + dd  # channels, N > 1 path
    A = tl.load(A_ptr + chan * N + n, mask=mask_r, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    Dv = tl.load(D_ptr + chan, mask=mask_r & (n == 0), other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + chan, mask=mask_r, other=0.0).to(tl.float32)
    u_row = _rows(pid_bg, G, DG, offs_d, su_b, su_c, 0, GATHER, SPLIT)  # rows of u / du
    dy_row = _rows(pid_bg, G, DG, offs_d, sy_b, sy_c, sy_g, GATHER, SPLIT and not PER_SEQ)
    state_off = seq.to(tl.int64) * NCHUNK * NP + n
    ar = tl.arange(0, BLOCK_L)
    last = (ar == BLOCK_L - 1)[None, :]
    first = (ar == 0)[None, :]
    b_ptrs = B_ptr + bc_off[:, None] + ar[None, :]

    # pass 1: the state at the start of every chunk (unless the forward stored them)
    if not HAVE_STATES:
        m = mask_r[:, None] & (ar < L)[None, :]
        upos, _yp, valid = _positions(idx_ptr, g, ar, L, W_img, su_h, su_w, sy_h, sy_w, GATHER)
        u_nx = tl.load(u_ptr + u_row[:, None] + upos[None, :], mask=mask_r[:, None] & valid[None, :], other=0.0)
        d_nx = _load_delta(delta_ptr, row_off, ar, m)
        b_nx = tl.load(b_ptrs, mask=m, other=0.0)
        h = tl.zeros((BLOCK_D * NP,), dtype=tl.float32)
        for c in range(0, NCHUNK):
            tl.store(state_ptr + state_off + c * NP, h, mask=mask_r)
            l0 = c * BLOCK_L
            mask2 = mask_r[:, None] & (l0 + ar < L)[None, :]
            if PREFETCH:
                u = u_nx.to(tl.float32)
                pre = d_nx.to(tl.float32) + bias[:, None]
                Bt = b_nx.to(tl.float32)
                m = mask_r[:, None] & (l0 + BLOCK_L + ar < L)[None, :]
                upos, _yp, valid = _positions(idx_ptr, g, l0 + BLOCK_L + ar, L, W_img, su_h, su_w, sy_h, sy_w, GATHER)
                u_nx = tl.load(u_ptr + u_row[:, None] + upos[None, :], mask=mask_r[:, None] & valid[None, :],
                               other=0.0)
                d_nx = _load_delta(delta_ptr, row_off, (l0 + BLOCK_L) + ar, m)
                b_nx = tl.load(b_ptrs + (l0 + BLOCK_L), mask=m, other=0.0)
            else:
                upos, _yp, valid = _positions(idx_ptr, g, l0 + ar, L, W_img, su_h, su_w, sy_h, sy_w, GATHER)
                u = tl.load(u_ptr + u_row[:, None] + upos[None, :], mask=mask_r[:, None] & valid[None, :],
                            other=0.0).to(tl.float32)
                pre = _load_delta(delta_ptr, row_off, l0 + ar, mask2) + bias[:, None]
                Bt = tl.load(b_ptrs + l0, mask=mask2, other=0.0).to(tl.float32)
            _dt, _alpha, _x, _xB, sa, sb = _chunk_scan(pre, u, Bt, A2, mask2, SOFTPLUS)
            h = tl.sum(tl.where(last, sb + sa * h[:, None], 0.0), axis=1)
        tl.debug_barrier()  # pass 2 reads states written by other threads of this program

    # pass 2: chunks from last to first
    cc_ptrs = C_ptr + bc_off[:, None] + ar[None, :]
    l_last = (NCHUNK - 1) * BLOCK_L
    m = mask_r[:, None] & (l_last + ar < L)[None, :]
    upos, ypos, valid = _positions(idx_ptr, g, l_last + ar, L, W_img, su_h, su_w, sy_h, sy_w, GATHER)
    mv = mask_r[:, None] & valid[None, :]
    u_nx = tl.load(u_ptr + u_row[:, None] + upos[None, :], mask=mv, other=0.0)
    dy_nx = tl.load(dy_ptr + dy_row[:, None] + ypos[None, :], mask=mv, other=0.0)
    d_nx = _load_delta(delta_ptr, row_off, l_last + ar, m)
    b_nx = tl.load(b_ptrs + l_last, mask=m, other=0.0)
    c_nx = tl.load(cc_ptrs + l_last, mask=m, other=0.0)
    q = tl.zeros((BLOCK_D * NP,), dtype=tl.float32)  # alpha_s g_s at the start s of the later chunk
    dA_acc = tl.zeros((BLOCK_D * NP,), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    n_idx = tl.arange(0, NP)
    bc_rows = (pid_bg.to(tl.int64) * N + n_idx) * L
    dbc_slab = tl.program_id(0).to(tl.int64) * tl.num_programs(1) * N * L
    if NP > 1:
        u_row_c = _rows(pid_bg, G, DG, dd, su_b, su_c, 0, GATHER, SPLIT)
        dy_row_c = _rows(pid_bg, G, DG, dd, sy_b, sy_c, sy_g, GATHER, SPLIT and not PER_SEQ)
        bias_c = tl.load(bias_ptr + chan_c, mask=mask_c, other=0.0).to(tl.float32)
        D_c = tl.load(D_ptr + chan_c, mask=mask_c, other=0.0).to(tl.float32)
    for k in range(0, NCHUNK):
        c = NCHUNK - 1 - k
        l0 = c * BLOCK_L
        offs_l = l0 + ar
        mask_l = offs_l < L
        mask2 = mask_r[:, None] & mask_l[None, :]
        h0 = tl.load(state_ptr + state_off + c * NP, mask=mask_r, other=0.0)
        upos, ypos, valid = _positions(idx_ptr, g, offs_l, L, W_img, su_h, su_w, sy_h, sy_w, GATHER)
        if PREFETCH:
            u = u_nx.to(tl.float32)
            pre = d_nx.to(tl.float32) + bias[:, None]
            Bt = b_nx.to(tl.float32)
            Ct = c_nx.to(tl.float32)
            dy = dy_nx.to(tl.float32)
            m = mask_r[:, None] & (l0 - BLOCK_L + ar >= 0)[None, :]
            upos_p, ypos_p, valid_p = _positions(idx_ptr, g, l0 - BLOCK_L + ar, L, W_img, su_h, su_w, sy_h, sy_w,
                                                 GATHER)
            mv = mask_r[:, None] & valid_p[None, :]
            u_nx = tl.load(u_ptr + u_row[:, None] + upos_p[None, :], mask=mv, other=0.0)
            dy_nx = tl.load(dy_ptr + dy_row[:, None] + ypos_p[None, :], mask=mv, other=0.0)
            d_nx = _load_delta(delta_ptr, row_off, (l0 - BLOCK_L) + ar, m)
            b_nx = tl.load(b_ptrs + (l0 - BLOCK_L), mask=m, other=0.0)
            c_nx = tl.load(cc_ptrs + (l0 - BLOCK_L), mask=m, other=0.0)
        else:
            mv = mask_r[:, None] & valid[None, :]
            u = tl.load(u_ptr + u_row[:, None] + upos[None, :], mask=mv, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + dy_row[:, None] + ypos[None, :], mask=mv, other=0.0).to(tl.float32)
            pre = _load_delta(delta_ptr, row_off, l0 + ar, mask2) + bias[:, None]
            Bt = tl.load(b_ptrs + l0, mask=mask2, other=0.0).to(tl.float32)
            Ct = tl.load(cc_ptrs + l0, mask=mask2, other=0.0).to(tl.float32)

        dt, alpha, x, xB, sa, sb = _chunk_scan(pre, u, Bt, A2, mask2, SOFTPLUS)
        hs = sb + sa * h0[:, None]  # states h_t of the chunk

        rhs = Ct * dy
        ones = tl.full(alpha.shape, 1.0, tl.float32)
        # the reverse scan as flip + forward scan (faster than reverse=True: docs/performance.md)
        _f, mm, s = tl.associative_scan((tl.flip(alpha, 1), ones, tl.flip(rhs, 1)), 1, _adjoint_combine)
        mm = tl.flip(mm, 1)
        s = tl.flip(s, 1)
        gs = s + mm * q[:, None]  # dL/dh_t
        q = tl.sum(tl.where(first, alpha * gs, 0.0), axis=1)

        da = gs * (hs - xB)
        dA_acc += tl.sum(da * dt, axis=1)
        dx = _chan_sum(gs * Bt, BLOCK_D, NP, BLOCK_L)  # dL/dx_t, x_t = dt_t u_t
        da_A = _chan_sum(da * A[:, None], BLOCK_D, NP, BLOCK_L)
        if NP == 1:
            u_c = u
            dt_c = dt
            pre_c = pre
            dy_c = dy
            D_c = Dv
            mask_cl = mask2
            seq_off = row_off
            du_row = u_row
        else:  # channel-level copies (cache hits: the same rows were just read for every state)
            mask_cl = mask_c[:, None] & mask_l[None, :]
            mv_c = mask_c[:, None] & valid[None, :]
            u_c = tl.load(u_ptr + u_row_c[:, None] + upos[None, :], mask=mv_c, other=0.0).to(tl.float32)
            dy_c = tl.load(dy_ptr + dy_row_c[:, None] + ypos[None, :], mask=mv_c, other=0.0).to(tl.float32)
            pre_c = _load_delta(delta_ptr, chan_off, offs_l, mask_cl) + bias_c[:, None]
            dt_c = _step_size(pre_c, mask_cl, SOFTPLUS)
            seq_off = chan_off
            du_row = u_row_c
        du = dx * dt_c + D_c[:, None] * dy_c
        ddt = dx * u_c + da_A
        if SOFTPLUS:
            ddelta = ddt * _sigmoid(pre_c)
        else:
            ddelta = ddt
        ddelta = tl.where(mask_cl, ddelta, 0.0)
        dD_acc += tl.sum(dy_c * u_c, axis=1)
        dbias_acc += tl.sum(ddelta, axis=1)
        tl.store(ddelta_ptr + seq_off[:, None] + offs_l[None, :], ddelta.to(ddelta_ptr.dtype.element_ty),
                 mask=mask_cl)
        if DETERMINISTIC:  # sequence g's own du map (sdu_g apart), written once per element
            du_row = du_row + g.to(tl.int64) * sdu_g
        du_ptrs = du_ptr + du_row[:, None] + upos[None, :]
        du_mask = mask_cl & valid[None, :]
        if GATHER and not DETERMINISTIC:
            tl.atomic_add(du_ptrs, du, mask=du_mask, sem="relaxed")
        else:
            tl.store(du_ptrs, du.to(du_ptr.dtype.element_ty), mask=du_mask)

        dB = _group_sum(gs * x, BLOCK_D, NP, BLOCK_L)  # (NP, BLOCK_L): summed over the program's channels
        dC = _group_sum(hs * dy, BLOCK_D, NP, BLOCK_L)
        # per-program partial sums (one slab per block of channels), reduced by the caller: no atomics, which
        # serialise when many channel blocks of a group add to the same (b, g, n, l)
        bc_ptrs = dbc_slab + bc_rows[:, None] + offs_l[None, :]
        mask_nl = (n_idx < N)[:, None] & mask_l[None, :]
        tl.store(dB_ptr + bc_ptrs, dB, mask=mask_nl)
        tl.store(dC_ptr + bc_ptrs, dC, mask=mask_nl)

    # per-batch partial sums, reduced over the batch by the caller
    tl.store(dA_ptr + seq * N + n, dA_acc, mask=mask_r)
    seq_c = (pid_bg - g) * DG + chan_c
    tl.store(dD_ptr + seq_c, dD_acc, mask=mask_c)
    tl.store(dbias_ptr + seq_c, dbias_acc, mask=mask_c)


# ----------------------------------------------------------------------------------------------------------
# Python wrappers
# ----------------------------------------------------------------------------------------------------------
CONFIG_KEYS = ("BLOCK_D", "BLOCK_L", "num_warps", "PREFETCH")
_overrides: dict = {}  # replaced (never mutated) by launch_config; read by pick_config at launch time only


def pick_config(n_state: int, length: int, channels_per_group: int, backward: bool = False) -> dict:
    """Launch config of a kernel: a program holds ``BLOCK_D`` channels x NP states (rows) x ``BLOCK_L`` steps,
    ``num_warps`` warps; ``PREFETCH`` (backward kernel): load the next chunk while this one is scanned.

    The defaults come from the block-size sweeps of ``tools/benchmark.py scan --sweep`` / ``scan2d --sweep``
    (docs/performance.md); keys set by an enclosing :func:`launch_config` replace them.
    """
    np2 = triton.next_power_of_2(n_state)
    if np2 <= 4:
        block_l = 32 if backward else 128
        block_d = max(1, (16 if backward else 8) // np2)
    else:
        block_l = 32
        block_d = max(1, 64 // np2)
    block_l = min(block_l, max(16, triton.next_power_of_2(length)))
    block_d = min(block_d, triton.next_power_of_2(channels_per_group))
    return {"BLOCK_D": block_d, "BLOCK_L": block_l, "num_warps": 4, "PREFETCH": True, **_overrides}


@contextlib.contextmanager
def launch_config(**overrides):
    """Replace keys of :func:`pick_config` (``CONFIG_KEYS``) for every launch inside the block (inner blocks add to
    outer ones). For tests and benchmark sweeps; not thread-safe. No fake implementation reads it: the one
    shape that depends on a launch config, that of the stored states, follows an explicit argument (``state_chunk``
    of the ``vssm::scan2d`` op, taken from :func:`state_chunk` when the op is called)."""
    unknown = sorted(set(overrides) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"launch_config: unknown keys {unknown}; valid: {', '.join(CONFIG_KEYS)}")
    global _overrides
    saved = _overrides
    _overrides = {**saved, **overrides}
    try:
        yield
    finally:
        _overrides = saved


def state_chunk(n_state: int, length: int, channels_per_group: int) -> int:
    """Chunk length of the backward kernel under the current config: the forward stores the states at its
    multiples when asked, and a backward given such states runs with that chunk length."""
    return pick_config(n_state, length, channels_per_group, backward=True)["BLOCK_L"]


def states_shape(batch: int, channels: int, n_state: int, length: int, chunk: int) -> tuple:
    """Shape of the chunk-start states stored every ``chunk`` steps: ``(batch*channels, n_chunks, next_pow2(N))``."""
    return batch * channels, _n_chunks(length, chunk), triton.next_power_of_2(n_state)


PER_IMAGE_PROJECTION_GRAD = 1024  # sequence length from which the dt_proj gradient is summed image by image


def _map_strides(u, index):
    """(batch, channel, h, w) strides of u: a ``(batch, C, H, W)`` map, or (``index`` None) the 1D layout
    ``(batch, G*D, L)`` seen as a (1, L) map."""
    return u.stride() if index is not None else (u.stride(0), u.stride(1), 0, 1)


def _out_strides(y, index):
    """(batch, sequence, channel, h, w) strides of y: K per-sequence maps ``(batch, K, C_k, H, W)``, else one
    map or the 1D layout (no sequence stride)."""
    if y.dim() == 5:
        return y.stride()
    s_b, s_c, s_h, s_w = _map_strides(y, index)
    return s_b, 0, s_c, s_h, s_w


def _n_chunks(length, block_l):
    return triton.cdiv(length, block_l)


def _launch_forward(u, delta, A, B, C, D, delta_bias, y, delta_softplus, index=None, width=1, split=True,
                    states=None, chunk=1):
    """Run the forward kernel. ``index`` None: u / y in the 1D layout; else u / y are 2D maps read / accumulated
    through the ``(K, L)`` index map (``width`` = W of the map), y being K per-sequence maps when 5D.
    ``states`` (``states_shape(..., chunk)``): also store the state at every multiple of ``chunk`` steps."""
    batch, groups, n_state, length = B.shape
    dg = A.shape[0] // groups
    cfg = pick_config(n_state, length, dg)
    grid = (triton.cdiv(dg, cfg["BLOCK_D"]), batch * groups)
    _fwd_kernel[grid](u, delta, A, B, C, D, delta_bias, y, u if index is None else index,
                      u if states is None else states,
                      length, dg, groups, n_state, _n_chunks(length, chunk), width, *delta.stride()[:2],
                      *_map_strides(u, index),
                      *_out_strides(y, index), SOFTPLUS=bool(delta_softplus), GATHER=index is not None,
                      SPLIT=bool(split), PER_SEQ=y.dim() == 5, STORE_STATES=states is not None, STATE_CHUNK=chunk,
                      NP=triton.next_power_of_2(n_state),
                      BLOCK_D=cfg["BLOCK_D"], BLOCK_L=cfg["BLOCK_L"], num_warps=cfg["num_warps"])


def _launch_backward(grad_y, u, delta, A, B, C, D, delta_bias, du, delta_softplus, index=None, width=1,
                     split=True, states=None, chunk=None, du_map_stride=None):
    """Run the backward kernel; writes (accumulates, with ``index``) ``du`` and returns the other gradients
    ``(ddelta, dA, dB, dC, dD, ddelta_bias)``.
    ``states``: the forward's chunk-start states, stored every ``chunk`` steps (the kernel then runs with
    ``BLOCK_L = chunk``); without them the kernel recomputes them first.
    ``du_map_stride`` (deterministic mode, see :func:`scan2d_backward`): plain stores, sequence g writing ``du``
    at ``g * du_map_stride`` elements further on, instead of atomic adds."""
    batch, groups, n_state, length = B.shape
    channels = A.shape[0]
    dg = channels // groups
    cfg = pick_config(n_state, length, dg, backward=True)
    if states is not None:
        cfg["BLOCK_L"] = chunk
        if states.shape != states_shape(batch, channels, n_state, length, chunk):
            raise ValueError(f"states {tuple(states.shape)} do not fit these inputs (chunk {chunk})")
    np2 = triton.next_power_of_2(n_state)
    n_chunks = _n_chunks(length, cfg["BLOCK_L"])
    f32 = dict(device=delta.device, dtype=torch.float32)
    d_blocks = triton.cdiv(dg, cfg["BLOCK_D"])
    ddelta = torch.empty_like(delta)  # delta's layout: the kernel addresses both with delta's strides
    dB = torch.empty(d_blocks, *B.shape, **f32)  # per channel-block partial sums
    dC = torch.empty(d_blocks, *C.shape, **f32)
    dA_part = torch.empty(batch, channels, n_state, **f32)
    dD_part = torch.empty(batch, channels, **f32)
    dbias_part = torch.empty(batch, channels, **f32)
    if batch * channels * length == 0:
        dA_part.zero_(), dD_part.zero_(), dbias_part.zero_(), dB.zero_(), dC.zero_(), ddelta.zero_()
    else:
        have_states = states is not None
        if not have_states:
            states = torch.empty(batch * channels * n_chunks * np2, **f32)
        grid = (d_blocks, batch * groups)
        _bwd_kernel[grid](u, delta, A, B, C, D, delta_bias, grad_y, u if index is None else index,
                          du, ddelta, dA_part, dD_part, dbias_part, dB, dC, states,
                          length, dg, groups, n_state, n_chunks, width, *delta.stride()[:2], *_map_strides(u, index),
                          *_out_strides(grad_y, index), du_map_stride or 0, SOFTPLUS=bool(delta_softplus),
                          GATHER=index is not None, SPLIT=bool(split), PER_SEQ=grad_y.dim() == 5,
                          HAVE_STATES=have_states, DETERMINISTIC=du_map_stride is not None,
                          PREFETCH=bool(cfg["PREFETCH"]), NP=np2, BLOCK_D=cfg["BLOCK_D"], BLOCK_L=cfg["BLOCK_L"],
                          num_warps=cfg["num_warps"])
    return (ddelta, dA_part.sum(0).to(A.dtype), dB.sum(0).to(B.dtype), dC.sum(0).to(C.dtype),
            dD_part.sum(0).to(D.dtype), dbias_part.sum(0).to(delta_bias.dtype))


def forward(u, delta, A, B, C, D, delta_bias, delta_softplus=True):
    """y (u's dtype) of the selective scan; inputs as in :func:`vssm.kernels.selective_scan` (D, delta_bias tensors,
    dtypes in :data:`DTYPES`)."""
    u, delta, A, B, C, D, delta_bias = (t.contiguous() for t in (u, delta, A, B, C, D, delta_bias))
    y = torch.empty_like(u)
    if y.numel():
        _launch_forward(u, delta, A, B, C, D, delta_bias, y, delta_softplus)
    return y


def backward(grad_y, u, delta, A, B, C, D, delta_bias, delta_softplus=True):
    """(du, ddelta, dA, dB, dC, dD, ddelta_bias), each in its input's dtype."""
    u, delta, A, B, C, D, delta_bias, grad_y = (
        t.contiguous() for t in (u, delta, A, B, C, D, delta_bias, grad_y))
    du = torch.empty_like(u)
    return (du, *_launch_backward(grad_y, u, delta, A, B, C, D, delta_bias, du, delta_softplus))


def _dense(x):
    """``x`` itself when its strides are those ``empty_like`` reproduces (dense, non-overlapping), else a copy."""
    return x if torch.empty_like(x).stride() == x.stride() else x.contiguous()


def _dense_steps(delta):
    """``delta (batch, channels, L)`` as the kernels address it (any batch / channel strides, steps adjacent),
    dense so that ``ddelta = empty_like(delta)`` shares its strides; a contiguous copy otherwise."""
    return delta if delta.stride(-1) == 1 and torch.empty_like(delta).stride() == delta.stride() else delta.contiguous()


def scan2d_forward(x, delta, A, B, C, D, delta_bias, index, split, delta_softplus=True, save_states=False,
                   dt_proj=None, out_dtype=torch.float32, per_sequence=False, states_every=None):
    """Fused gather -> selective scan -> scatter-add over a 2D map (see :func:`vssm.kernels.scan2d`).

    ``x (batch, C, H, W)`` any strides; ``index (K, L)`` int32 flat positions (-1: padding); ``delta``
    ``(batch, K*C_k, L)``, or with ``dt_proj (K, C_k, R)`` the low-rank ``(batch, K, R, L)`` it projects (the
    projected step sizes exist only during the call: a ``(batch, K*C_k, L)`` product on the tensor cores costs
    less than forming them inside the scan, and nothing of that size is kept for the backward).
    Returns the ``(batch, C, H, W)`` sum of the K outputs at their positions (summed in float32, channels-last
    in memory), or with ``per_sequence`` the K maps ``(batch, K, C_k, H, W)`` (each sequence must visit every
    position; stored directly in ``out_dtype``, channels-last within each map), and with ``save_states`` the
    states every ``states_every`` steps (default :func:`state_chunk` under the current config) for
    :func:`scan2d_backward`, else an empty tensor."""
    x = _dense(x)
    if dt_proj is not None:
        delta = project_step_sizes(delta, dt_proj)
    delta = _dense_steps(delta)
    A, B, C, D, delta_bias = (t.contiguous() for t in (A, B, C, D, delta_bias))
    batch, channels, H, W = x.shape
    groups, n_state, length = B.shape[1:]
    width = A.shape[0]
    maps = None
    if per_sequence:  # every (sequence, position) is written once
        y = torch.empty(batch, groups, H, W, width // groups, device=x.device, dtype=out_dtype)
        y = y.permute(0, 1, 4, 2, 3)
    elif torch.are_deterministic_algorithms_enabled():
        y, maps = _deterministic_maps(batch, groups, channels, H, W, split, x.device)
    else:
        y = torch.zeros(batch, H, W, channels, device=x.device, dtype=torch.float32).permute(0, 3, 1, 2)
    if save_states and states_every is None:
        states_every = state_chunk(n_state, length, width // groups)
    shape = states_shape(batch, width, n_state, length, states_every) if save_states else (0,)
    states = torch.empty(shape, device=x.device, dtype=torch.float32)
    if batch * width * length:
        _launch_forward(x, delta, A, B, C, D, delta_bias, y, delta_softplus, index=index, width=W, split=split,
                        states=states if save_states else None, chunk=states_every if save_states else 1)
    if maps is not None:  # the K maps summed in the order k = 0, 1, ... (one map for split patterns)
        y = (maps[0] if len(maps) == 1 else maps.sum(0)).permute(0, 3, 1, 2)
    return y.to(out_dtype), states


def _deterministic_maps(batch, groups, channels, H, W, split, device):
    """Deterministic mode (``torch.use_deterministic_algorithms(True)``) of the summed output: ``(y, maps)``, with
    ``y`` the ``(batch, K, C_k, H, W)`` target of the kernel's per-sequence path (plain stores, no atomics) in
    ``maps (M, batch, H, W, C)`` float32 zeros. Split patterns: M = 1, sequence k owning channels k*C_k.. of the
    one map; else M = K maps, one per sequence, summed by the caller in a fixed order. Each element is written
    once as long as no sequence visits a position twice (true of every registered pattern)."""
    f32 = dict(device=device, dtype=torch.float32)
    if split:
        maps = torch.zeros(1, batch, H, W, channels, **f32)
        return maps[0].view(batch, H, W, groups, channels // groups).permute(0, 3, 4, 1, 2), maps
    maps = torch.zeros(groups, batch, H, W, channels, **f32)
    return maps.permute(1, 0, 4, 2, 3), maps


def scan2d_backward(grad_y, x, delta, A, B, C, D, delta_bias, index, split, delta_softplus=True, states=None,
                    dt_proj=None, states_every=None):
    """Gradients of :func:`scan2d_forward`: ``(dx, ddelta, dA, dB, dC, dD, ddelta_bias)``, plus ``ddt_proj``
    with ``dt_proj`` (then ``ddelta`` is the gradient of the low-rank input, and the step sizes are projected
    again here). ``grad_y``: of the summed map, or 5D of the K per-sequence maps. ``states``: the ones the forward
    saved every ``states_every`` steps (default :func:`state_chunk` under the current config), else recomputed
    (None or empty). Under ``torch.use_deterministic_algorithms(True)`` dx is stored without atomics
    (K float32 maps summed in order, or one map for split patterns), as the forward's summed output is; the
    other gradients never use atomics, so the results are bitwise reproducible."""
    x = _dense(x)
    if dt_proj is not None:
        low_shape = delta.shape
        weight, low = rank_padded_operands(delta, dt_proj)
        delta = steps_from_operands(weight, low, low_shape[0], low_shape[3])
    delta = _dense_steps(delta)
    A, B, C, D, delta_bias = (t.contiguous() for t in (A, B, C, D, delta_bias))
    if grad_y.dim() == 4:
        grad_y = grad_y.contiguous(memory_format=torch.channels_last)
    map_stride = None
    if not torch.are_deterministic_algorithms_enabled():
        dx = torch.zeros_like(x, dtype=torch.float32)
    else:  # plain stores: split patterns into one map (their sequences own disjoint channels), else K maps
        maps = torch.zeros(1 if split else index.shape[0], x.numel(), device=x.device, dtype=torch.float32)
        dx = maps[0].as_strided(x.shape, x.stride())  # x is dense: its strides address numel elements
        map_stride = x.numel() if len(maps) > 1 else 0
    if states is not None and not states.numel():
        states = None
    if states is not None and states_every is None:
        states_every = state_chunk(B.shape[2], B.shape[3], A.shape[0] // B.shape[1])
    ddelta, *grads = _launch_backward(grad_y, x, delta, A, B, C, D, delta_bias, dx, delta_softplus, index=index,
                                      width=x.shape[3], split=split, states=states, chunk=states_every,
                                      du_map_stride=map_stride)
    if map_stride is not None and len(maps) > 1:  # the K maps summed in the order k = 0, 1, ...
        dx = maps.sum(0).as_strided(x.shape, x.stride())
    if dt_proj is None:
        return (dx.to(x.dtype), ddelta, *grads)
    batch, K, R, length = low_shape
    ddelta = ddelta.transpose(0, 1).reshape(K, -1, batch * length)  # a view: ddelta is laid out like delta
    d_low = torch.bmm(weight.transpose(1, 2), ddelta)[:, :R].view(K, R, batch, length).permute(2, 0, 1, 3)
    return (dx.to(x.dtype), d_low, *grads, _projection_grad(ddelta, low, batch)[..., :R].to(dt_proj.dtype))


def _projection_grad(ddelta, low, batch):
    """``(K, C_k, R8)`` gradient of the padded projection weight: ``ddelta (K, C_k, batch*L) @ low^T``. One product
    over all ``batch*L`` steps, or one per image summed from ``PER_IMAGE_PROJECTION_GRAD`` steps on, where cuBLAS
    runs the single long reduction slower (docs/performance.md)."""
    K, channels, steps = ddelta.shape
    length = steps // batch
    if length < PER_IMAGE_PROJECTION_GRAD:
        return torch.bmm(ddelta, low.transpose(1, 2))
    per_image = [torch.bmm(ddelta[k].view(channels, batch, length).transpose(0, 1),
                           low[k].view(-1, batch, length).permute(1, 2, 0))
                 .sum(0, dtype=torch.promote_types(ddelta.dtype, torch.float32))
                 for k in range(K)]
    return torch.stack(per_image)
