"""The one selective-scan entry point, its backend table and the ``vssm::selective_scan`` custom op.

Every backend is reached through one ``torch.library`` custom op, so ``torch.compile`` sees a single
opaque node with a fake (shape) implementation, ``torch.utils.flop_counter`` counts it with the formula
the VMamba paper uses, and autograd goes through the backend's own backward.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch.utils.flop_counter import register_flop_formula

from .chunked import selective_scan_chunked
from .reference import selective_scan_reference

__all__ = ["selective_scan", "register_backend", "list_backends", "resolve_backend"]


@dataclass(frozen=True)
class Backend:
    """``forward(u, delta, A, B, C, D, delta_bias, delta_softplus) -> y`` and
    ``backward(grad_y, *same inputs) -> (du, ddelta, dA, dB, dC, dD, ddelta_bias)``."""
    name: str
    forward: Callable
    backward: Callable
    devices: Optional[Sequence[str]]  # None: any device
    dtypes: Optional[Sequence[torch.dtype]]  # input dtypes it takes; None: any
    priority: int  # "auto" picks the highest priority backend that takes the device and dtype

    def takes(self, device: torch.device, dtype: torch.dtype) -> bool:
        return ((self.devices is None or device.type in self.devices)
                and (self.dtypes is None or dtype in self.dtypes))


_BACKENDS: dict[str, Backend] = {}
_OPAQUE_BACKWARD: set[str] = set()  # backends whose explicit backward runs as the op vssm::selective_scan_backward


def register_backend(name, forward, backward=None, devices=None, priority=0, dtypes=None):
    """Add a backend for ``devices`` (device types, None: any) and input ``dtypes`` (None: any). Without
    ``backward`` the gradient is autograd through a recomputed ``forward``.

    An explicit ``backward`` (a kernel) is called through its own opaque custom op, so that torch.compile's
    AOT autograd never traces into it with fake tensors."""
    _BACKENDS[name] = Backend(name, forward, backward or _recompute_backward(forward), devices, dtypes, priority)
    if backward is not None:
        _OPAQUE_BACKWARD.add(name)
    else:
        _OPAQUE_BACKWARD.discard(name)


def list_backends() -> list[str]:
    return ["auto", *sorted(_BACKENDS)]


def _recompute_backward(forward):
    def backward(grad_y, u, delta, A, B, C, D, delta_bias, delta_softplus):
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(t.is_floating_point()) for t in (u, delta, A, B, C, D, delta_bias)]
            y = forward(*inputs, delta_softplus)
            grads = torch.autograd.grad(y, inputs, grad_y, allow_unused=True)
        return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs))
    return backward


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """Name of the backend that runs for ``backend`` (maybe "auto") on ``device`` with inputs of ``dtype``.

    A named backend on a device it does not run on is an error. A named backend that does not take the dtype
    (the Triton kernels and float64) hands over to what "auto" picks for that dtype (the chunked backend, with a
    float64 state): the one place where the float64 fallback is decided, for ``selective_scan`` and ``scan2d``."""
    if backend != "auto":
        if backend not in _BACKENDS:
            raise ValueError(f"unknown selective-scan backend {backend!r}; valid: {', '.join(list_backends())}")
        devices = _BACKENDS[backend].devices
        if devices is not None and device.type not in devices:
            raise ValueError(f"selective-scan backend {backend!r} runs on {'/'.join(devices)} tensors, "
                             f"got {device.type}")
        if _BACKENDS[backend].takes(device, dtype):
            return backend
    usable = [b for b in _BACKENDS.values() if b.takes(device, dtype)]
    return max(usable, key=lambda b: b.priority).name


register_backend("reference", selective_scan_reference, priority=0)
register_backend("chunked", selective_scan_chunked, priority=10)

try:  # Triton kernels (CUDA tensors only); without triton, "auto" keeps to the PyTorch backends
    from . import triton_scan as _triton_scan
except ImportError:  # pragma: no cover
    _triton_scan = None
else:
    register_backend("triton", _triton_scan.forward, _triton_scan.backward, devices=("cuda",), priority=20,
                     dtypes=_triton_scan.DTYPES)


@torch.library.custom_op("vssm::selective_scan", mutates_args=())
def _selective_scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                       D: torch.Tensor, delta_bias: torch.Tensor, delta_softplus: bool, backend: str) -> torch.Tensor:
    return _BACKENDS[backend].forward(u, delta, A, B, C, D, delta_bias, delta_softplus)


@_selective_scan_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, backend):
    return torch.empty_like(u)


def _setup_context(ctx, inputs, output):
    *tensors, delta_softplus, backend = inputs
    ctx.save_for_backward(*tensors)
    ctx.delta_softplus = delta_softplus
    ctx.backend = backend


def _backward(ctx, grad_y):
    if ctx.backend in _OPAQUE_BACKWARD:
        grads = torch.ops.vssm.selective_scan_backward(grad_y, *ctx.saved_tensors, ctx.delta_softplus, ctx.backend)
    else:
        grads = _BACKENDS[ctx.backend].backward(grad_y, *ctx.saved_tensors, ctx.delta_softplus)
    return (*grads, None, None)


@torch.library.custom_op("vssm::selective_scan_backward", mutates_args=())
def _selective_scan_backward_op(
        grad_y: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
        C: torch.Tensor, D: torch.Tensor, delta_bias: torch.Tensor, delta_softplus: bool, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    grads = _BACKENDS[backend].backward(grad_y.contiguous(), u, delta, A, B, C, D, delta_bias, delta_softplus)
    return tuple(g.contiguous() for g in grads)  # the layout the fake promises


@_selective_scan_backward_op.register_fake
def _(grad_y, u, delta, A, B, C, D, delta_bias, delta_softplus, backend):
    return tuple(t.new_empty(t.shape) for t in (u, delta, A, B, C, D, delta_bias))  # contiguous


_selective_scan_op.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.vssm.selective_scan)
def _selective_scan_flops(u_shape, delta_shape, A_shape, B_shape, *args, out_shape=None, **kwargs) -> int:
    """VMamba's count for a selective scan with D skip and no z gate: 9*b*L*channels*N + b*channels*L."""
    batch, channels, length = u_shape
    n_state = A_shape[1]
    return 9 * batch * length * channels * n_state + batch * channels * length


def _check_inputs(u, delta, A, B, C, D, delta_bias):
    def shape_error(what):
        named = (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("delta_bias", delta_bias))
        shapes = ", ".join(f"{n}={tuple(t.shape) if t is not None else None}" for n, t in named)
        return ValueError(f"selective_scan: {what}; expected u, delta (batch, G*D, L), A (G*D, N), "
                          f"B, C (batch, G, N, L), D, delta_bias (G*D,); got {shapes}")

    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("delta_bias", delta_bias)):
        if t is not None and not t.is_floating_point():
            raise TypeError(f"selective_scan: {name} must be a floating-point tensor, got {t.dtype}")
        if t is not None and t.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {t.device} but u is on {u.device}")
    if u.dim() != 3 or delta.shape != u.shape:
        raise shape_error("u and delta must both be (batch, G*D, L)")
    if delta.dtype != u.dtype:
        raise TypeError(f"selective_scan: u ({u.dtype}) and delta ({delta.dtype}) must share a dtype")
    batch, channels, length = u.shape
    if A.dim() != 2 or A.shape[0] != channels:
        raise shape_error("A must be (G*D, N)")
    n_state = A.shape[1]
    if B.dim() != 4 or B.shape[0] != batch or B.shape[2] != n_state or B.shape[3] != length or C.shape != B.shape:
        raise shape_error("B and C must both be (batch, G, N, L)")
    if B.shape[1] == 0 or channels % B.shape[1]:
        raise shape_error(f"channels {channels} are not divisible by the {B.shape[1]} groups of B/C")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (channels,):
            raise shape_error(f"{name} must be (G*D,)")


def selective_scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, backend="auto"):
    """Selective scan (S6) in the grouped layout of the visual SSMs.

    Args:
        u: input ``(batch, G*D, L)``; float32, float16, bfloat16 or float64.
        delta: step sizes before softplus, ``(batch, G*D, L)``, same dtype as ``u``.
        A: state matrix ``(G*D, N)`` (negative for a stable scan; VMamba stores ``-exp(A_logs)``).
        B, C: input/output projections ``(batch, G, N, L)``, shared by the D channels of each group.
        D: skip weight ``(G*D,)`` or None. delta_bias: ``(G*D,)`` or None.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        backend: ``"auto"`` (fastest for the device and dtype), ``"reference"``, ``"chunked"`` or a registered
            one; one that does not take the dtype hands over to ``"auto"`` (see :func:`resolve_backend`).

    ``dt = softplus(delta + delta_bias)``; ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``;
    ``y_t = C_t . h_t + D u_t``. The state is float32 (float64 for float64 inputs).

    Returns:
        ``(batch, G*D, L)`` in ``u``'s dtype.
    """
    _check_inputs(u, delta, A, B, C, D, delta_bias)
    name = resolve_backend(backend, u.device, u.dtype)
    channels = u.shape[1]
    if D is None:
        D = u.new_zeros(channels, dtype=A.dtype)
    if delta_bias is None:
        delta_bias = u.new_zeros(channels, dtype=A.dtype)
    if torch.onnx.is_in_onnx_export():
        return selective_scan_chunked(u, delta, A, B, C, D, delta_bias, bool(delta_softplus), traced_loop=True)
    return torch.ops.vssm.selective_scan(u, delta, A, B, C, D, delta_bias, bool(delta_softplus), name)
