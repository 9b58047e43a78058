"""Selective scan over a 2D map along a scan pattern's K token orders: gather, scan, scatter-add in one op.

``scan2d(x, delta, A, B, C, D, delta_bias, pattern)`` equals
``pattern.merge(selective_scan(pattern.flatten(x), delta, A, B, C, D, delta_bias), (H, W))`` but with the
``"triton"`` backend it never builds the K copies of ``x`` nor the K per-direction outputs: the kernel reads
the tokens of every sequence from the 2D map through the pattern's index map and adds each output into the
single float32 result (see kernels/triton_scan.py). Other backends run that composition in PyTorch.

The fused path is the custom op ``vssm::scan2d`` (fake implementation and autograd through the opaque op
``vssm::scan2d_backward``), so ``torch.compile`` keeps it as one node.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch.utils.flop_counter import register_flop_formula

from .. import scans
from .selective_scan import resolve_backend, selective_scan
from .step_sizes import project_step_sizes

try:  # the fused kernel (CUDA tensors); without triton the PyTorch composition runs
    from . import triton_scan
except ImportError:  # pragma: no cover
    triton_scan = None

__all__ = ["scan2d"]


def _check(x, delta, A, B, C, pattern, dt_proj):
    if x.dim() != 4:
        raise ValueError(f"scan2d: x must be a (batch, C, H, W) map, got shape {tuple(x.shape)}")
    batch, channels, H, W = x.shape
    K, L = pattern.K, pattern.sequence_length(H, W)
    c_k = pattern.channels_per_sequence(channels)
    if dt_proj is not None:
        if dt_proj.dim() != 3 or dt_proj.shape[:2] != (K, c_k):
            raise ValueError(f"scan2d: dt_proj must be (K={K}, C_k={c_k}, R), got {tuple(dt_proj.shape)}")
        if delta.shape != (batch, K, dt_proj.shape[2], L):
            raise ValueError(f"scan2d: with dt_proj {tuple(dt_proj.shape)} delta is the low-rank "
                             f"{(batch, K, dt_proj.shape[2], L)}, got {tuple(delta.shape)}")
    elif delta.shape != (batch, K * c_k, L):
        raise ValueError(f"scan2d: for x {tuple(x.shape)} and pattern {pattern.name!r} (K={K}, L={L}) delta must be "
                         f"{(batch, K * c_k, L)}, got {tuple(delta.shape)}")
    if B.dim() != 4 or B.shape[:2] != (batch, K) or B.shape[3] != L or C.shape != B.shape:
        raise ValueError(f"scan2d: B and C must both be (batch, K={K}, N, L={L}), got {tuple(B.shape)} and "
                         f"{tuple(C.shape)}")
    if A.shape != (K * c_k, B.shape[2]):
        raise ValueError(f"scan2d: A must be (K*C_k, N) = {(K * c_k, B.shape[2])}, got {tuple(A.shape)}")
    if delta.dtype != x.dtype:
        raise TypeError(f"scan2d: x ({x.dtype}) and delta ({delta.dtype}) must share a dtype")


def scan2d(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
           D: torch.Tensor = None, delta_bias: torch.Tensor = None,
           pattern: Union[str, "scans.ScanPattern"] = "cross", delta_softplus: bool = True,
           backend: str = "auto", dt_proj: Optional[torch.Tensor] = None,
           out_dtype: Optional[torch.dtype] = None, per_sequence: bool = False) -> torch.Tensor:
    """Selective scan of a 2D map along ``pattern``, outputs of the K sequences summed at their positions (or
    kept apart, ``per_sequence``).

    Args:
        x: ``(batch, C, H, W)``, any strides (channels-last needs no copy).
        delta: ``(batch, K*C_k, L)`` step sizes in sequence order (``C_k = C``, or ``C / K`` for a
            channel-splitting pattern). A: ``(K*C_k, N)``. B, C: ``(batch, K, N, L)`` in sequence order.
        D, delta_bias: ``(K*C_k,)`` or None.  pattern: a registered pattern name or a built ``ScanPattern``.
        backend: as :func:`vssm.kernels.selective_scan`; ``"triton"`` (``auto`` on CUDA) runs the fused kernel.
        dt_proj: ``(K, C_k, R)``: ``delta`` is then the low-rank ``(batch, K, R, L)`` and the step sizes are
            ``einsum('bkrl,kdr->bkdl', delta, dt_proj)``, formed inside the op and never saved for the backward.
        out_dtype: dtype of the result (the K outputs are summed in float32 and rounded once); default float32
            (float64 for float64 input). A 16-bit result halves what a following layer saves for its backward.
        per_sequence: return the K outputs apart, each at its positions: ``(batch, K, C_k, H, W)`` (for a layer
            that weighs the directions before summing them). The pattern must visit every position in every
            sequence (``pattern.sequences_cover_map``).

    Returns:
        ``(batch, C, H, W)`` (or ``(batch, K, C_k, H, W)``) in ``out_dtype``, channels-last in memory on the
        triton backend.
    """
    pattern = scans.build(pattern) if isinstance(pattern, str) else pattern
    _check(x, delta, A, B, C, pattern, dt_proj)
    batch, channels, H, W = x.shape
    width = A.shape[0]
    D = x.new_zeros(width, dtype=A.dtype) if D is None else D
    delta_bias = x.new_zeros(width, dtype=A.dtype) if delta_bias is None else delta_bias
    if per_sequence and not pattern.sequences_cover_map:
        raise ValueError(f"scan2d: per_sequence needs a pattern whose every sequence visits every position; "
                         f"{pattern.name!r} does not")
    name = resolve_backend(backend, x.device, x.dtype)
    sum_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    out_dtype = sum_dtype if out_dtype is None else out_dtype
    if name == "triton" and not torch.onnx.is_in_onnx_export():
        index = pattern.device_index(H, W, x.device, torch.int32)
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, delta, A, B, C, D, delta_bias, dt_proj))
        n_state, length = B.shape[2], B.shape[3]
        state_chunk = triton_scan.state_chunk(n_state, length, width // pattern.K) if needs_grad else 0
        y, _states = torch.ops.vssm.scan2d(x, delta, A, B, C, D, delta_bias, index, pattern.split_channels,
                                           bool(delta_softplus), state_chunk, dt_proj, out_dtype, per_sequence)
        return y
    if dt_proj is not None:
        delta = project_step_sizes(delta, dt_proj).contiguous()  # the PyTorch backends take the usual layout
    xs = pattern.flatten(x)  # (batch, K, C_k, L)
    ys = selective_scan(xs.reshape(batch, width, xs.shape[-1]), delta, A, B, C, D, delta_bias, delta_softplus,
                        backend=name)
    ys = ys.view(xs.shape).to(sum_dtype)
    return (pattern.scatter(ys, (H, W)) if per_sequence else pattern.merge(ys, (H, W))).to(out_dtype)


# ---- the fused op ---------------------------------------------------------------------------------------

@torch.library.custom_op("vssm::scan2d", mutates_args=())
def _scan2d_op(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
               D: torch.Tensor, delta_bias: torch.Tensor, index: torch.Tensor, split: bool,
               delta_softplus: bool, state_chunk: int, dt_proj: Optional[torch.Tensor],
               out_dtype: torch.dtype, per_sequence: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, states)``: the summed output (or the K per-sequence maps) in ``out_dtype`` and, for ``state_chunk``
    > 0, the states at every multiple of ``state_chunk`` steps, which the backward reuses instead of recomputing
    them (an empty tensor for 0). The callers take ``state_chunk`` from ``triton_scan.state_chunk``."""
    return triton_scan.scan2d_forward(x, delta, A, B, C, D, delta_bias, index, split, delta_softplus,
                                      state_chunk > 0, dt_proj, out_dtype, per_sequence, state_chunk)


@_scan2d_op.register_fake
def _(x, delta, A, B, C, D, delta_bias, index, split, delta_softplus, state_chunk, dt_proj, out_dtype,
      per_sequence):
    batch, channels, H, W = x.shape
    groups, n_state, length = B.shape[1:]
    width = A.shape[0]
    if per_sequence:
        y = x.new_empty(batch, groups, H, W, width // groups, dtype=out_dtype).permute(0, 1, 4, 2, 3)
    else:
        y = x.new_empty(batch, H, W, channels, dtype=out_dtype).permute(0, 3, 1, 2)
    shape = triton_scan.states_shape(batch, width, n_state, length, state_chunk) if state_chunk else (0,)
    return y, x.new_empty(shape, dtype=torch.float32)


@torch.library.custom_op("vssm::scan2d_backward", mutates_args=())
def _scan2d_backward_op(
        grad_y: torch.Tensor, x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
        C: torch.Tensor, D: torch.Tensor, delta_bias: torch.Tensor, index: torch.Tensor, states: torch.Tensor,
        state_chunk: int, split: bool, delta_softplus: bool, dt_proj: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
           torch.Tensor]:
    """Gradients of every tensor input; the last is that of ``dt_proj`` (an empty tensor without one). ``states``:
    the forward's, stored every ``state_chunk`` steps (empty: recomputed)."""
    dx, *grads = triton_scan.scan2d_backward(grad_y, x, delta, A, B, C, D, delta_bias, index, split,
                                             delta_softplus, states, dt_proj, state_chunk)
    grads = [g.contiguous() for g in grads]  # the layout the fake promises
    return (dx, *grads) if dt_proj is not None else (dx, *grads, x.new_empty(0))


@_scan2d_backward_op.register_fake
def _(grad_y, x, delta, A, B, C, D, delta_bias, index, states, state_chunk, split, delta_softplus, dt_proj):
    """dx in x's layout, every other gradient contiguous."""
    def contiguous_like(t):
        return t.new_empty(t.shape)

    return (torch.empty_like(x), *(contiguous_like(t) for t in (delta, A, B, C, D, delta_bias)),
            contiguous_like(dt_proj) if dt_proj is not None else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    *tensors, index, split, delta_softplus, state_chunk, dt_proj, _out_dtype, _per_sequence = inputs
    ctx.save_for_backward(*tensors, index, output[1], dt_proj)
    ctx.split = split
    ctx.delta_softplus = delta_softplus
    ctx.state_chunk = state_chunk


def _backward(ctx, grad_y, _grad_states):
    *tensors, index, states, dt_proj = ctx.saved_tensors
    *grads, d_proj = torch.ops.vssm.scan2d_backward(grad_y, *tensors, index, states, ctx.state_chunk, ctx.split,
                                                    ctx.delta_softplus, dt_proj)
    return (*grads, None, None, None, None, d_proj if dt_proj is not None else None, None, None)


_scan2d_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.vssm.scan2d)
def _scan2d_flops(x_shape, delta_shape, A_shape, B_shape, *args, out_shape=None, **kwargs) -> int:
    """The selective scan's count (kernels/selective_scan.py) for the K sequences, plus the step-size projection
    with ``dt_proj`` (``delta`` is then the low-rank ``(batch, K, R, L)``); gather/merge are moves."""
    batch, channels, length = x_shape[0], A_shape[0], B_shape[-1]
    projection = 2 * batch * channels * delta_shape[2] * length if len(delta_shape) == 4 else 0
    return 9 * batch * length * channels * A_shape[1] + batch * channels * length + projection
