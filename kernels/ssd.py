"""State-space duality (SSD, Mamba-2) operators: the causal chunked scan, VSSD's non-causal form and the
bidirectional form, each one entry point over a backend table, run through the custom op ``vssm::ssd``.

Layout (Mamba-2's): ``x (batch, L, H, P)``, ``dt (batch, L, H)``, ``A (H,)`` (one scalar decay per head),
``B, C (batch, L, G, N)`` shared by the ``H // G`` heads of each group (head ``h`` reads group ``h // (H // G)``),
``D (H,)`` skip, ``dt_bias (H,)``. ``dt = softplus(dt + dt_bias)`` if ``dt_softplus``, else ``dt + dt_bias``.

* causal: ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t^T``, ``y_t = C_t h_t + D x_t`` (h is ``(N, P)`` per head):
  the grouped selective scan with a decay that is scalar per head.
* non-causal (VSSD): one state for the whole sequence, ``h = sum_s dt_s A B_s x_s^T``, ``y_t = C_t h + D x_t``
  (a linear attention with keys B, queries C, values ``dt A x``); VSSD passes ``A = exp(A_log)`` ("positive dA").
* bidirectional (VSSD's ``BIDIRECTION``): the first half of the heads scans forward, the second half scans the
  reversed sequence (groups split the same way; one group is shared by both halves).

Backends: ``reference`` (sequential loops, float64 capable), ``chunked`` (PyTorch: the causal form as Mamba-2's
chunked matmuls with an in-chunk ``T x T`` decay matrix, chunk size ``T`` an argument; the non-causal form as
two matmuls, O(L) memory, no ``L x L`` matrix) and, for the non-causal form on CUDA, ``triton``
(kernels/triton_ssd.py, forward and backward kernels). Their gradients are autograd through the recomputed forward; a
backend with its own backward kernel runs it as the opaque op ``vssm::ssd_backward``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

from .ssd_reference import prepare, ssd_causal_reference, ssd_noncausal_reference

__all__ = ["ssd_causal", "ssd_noncausal", "ssd_bidirectional", "register_ssd_backend", "list_ssd_backends",
           "resolve_ssd_backend", "FORMS"]

FORMS = ("causal", "noncausal")


# ---- chunked PyTorch backend ---------------------------------------------------------------------------

def _segment_sums(a: torch.Tensor) -> torch.Tensor:
    """``out[..., i, j] = a[..., j+1] + ... + a[..., i]`` for ``i >= j`` and ``-inf`` above the diagonal, from
    ``a (..., T)``; a masked cumulative sum (no difference of large cumulative sums)."""
    T = a.shape[-1]
    rep = a[..., None].expand(*a.shape, T)  # rep[..., i, j] = a[..., i]
    strict = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    sums = rep.masked_fill(~strict, 0).cumsum(dim=-2)
    return sums.masked_fill(~strict.logical_or(torch.eye(T, dtype=torch.bool, device=a.device)), float("-inf"))


def ssd_causal_chunked(x, dt, A, B, C, D, dt_bias, dt_softplus=False, chunk_size=64):
    """Mamba-2's chunked SSD: in-chunk outputs through the ``T x T`` decay-masked ``C B^T`` (quadratic in T),
    the chunk-end states, a loop over the ``L / T`` chunks carrying the state, and its read-out."""
    x, dt, A, D = prepare(x, dt, A, D, dt_bias, dt_softplus)
    batch, length, heads, dim = x.shape
    groups = B.shape[2]
    T = max(1, min(chunk_size, length))
    n_chunks = -(-length // T)
    pad = n_chunks * T - length
    skip = D[:, None] * x
    B, C = B.to(x.dtype), C.to(x.dtype)
    if pad:  # zero dt at the end: no decay and no input, every real step unchanged
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    K = heads // groups  # heads per group
    shape = (batch, n_chunks, T, heads)
    xdt = (x * dt[..., None]).reshape(*shape, dim)
    B, C = B.reshape(batch, n_chunks, T, groups, -1), C.reshape(batch, n_chunks, T, groups, -1)
    a = (dt * A).reshape(shape).permute(0, 1, 3, 2)  # (b, c, H, T)
    cum = a.cumsum(dim=-1)

    # 1. inside each chunk: y_l = sum_{s <= l} (C_l . B_s) exp(cum_l - cum_s) dt_s x_s
    scores = torch.einsum("bclgn,bcsgn->bcgls", C, B).repeat_interleave(K, dim=2) * _segment_sums(a).exp()
    y = torch.einsum("bchls,bcshp->bclhp", scores, xdt)

    # 2. each chunk's end state from a zero start
    B, C = B.repeat_interleave(K, dim=3), C.repeat_interleave(K, dim=3)  # (b, c, T, H, N)
    to_end = (cum[..., -1:] - cum).exp().transpose(2, 3)  # (b, c, T, H)
    chunk_states = torch.einsum("bcshn,bcshp->bchnp", B, xdt * to_end[..., None])

    # 3. the state entering each chunk
    chunk_decay = cum[..., -1].exp()  # (b, c, H)
    carried = [torch.zeros_like(chunk_states[:, 0])]
    for c in range(n_chunks - 1):
        carried.append(chunk_decay[:, c, :, None, None] * carried[-1] + chunk_states[:, c])
    carried = torch.stack(carried, dim=1)  # (b, c, H, N, P)

    # 4. its contribution: C_l exp(cum_l) h_in
    y = y + torch.einsum("bclhn,bchnp->bclhp", C, carried) * cum.exp().transpose(2, 3)[..., None]
    return y.reshape(batch, n_chunks * T, heads, dim)[:, :length] + skip


def ssd_noncausal_chunked(x, dt, A, B, C, D, dt_bias, dt_softplus=False, chunk_size=0):
    """The non-causal form as two matmuls per group: ``h = B^T (dt A x)``, ``y = C h + D x`` (``chunk_size`` is
    ignored)."""
    x, dt, A, D = prepare(x, dt, A, D, dt_bias, dt_softplus)
    batch, length, heads, dim = x.shape
    groups = B.shape[2]
    values = (x * (dt * A)[..., None]).reshape(batch, length, groups, heads // groups, dim)
    state = torch.einsum("blgn,blgkp->bgknp", B.to(x.dtype), values)
    y = torch.einsum("blgn,bgknp->blgkp", C.to(x.dtype), state).reshape(batch, length, heads, dim)
    return y + D[:, None] * x


# ---- backend table --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SSDBackend:
    """``forward(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size) -> y`` in the compute dtype."""
    name: str
    form: str
    forward: Callable
    backward: Callable
    devices: Optional[Sequence[str]]  # None: any device
    dtypes: Optional[Sequence[torch.dtype]]  # input dtypes it takes; None: any
    priority: int
    opaque_backward: bool  # an explicit backward (a kernel), run as the op vssm::ssd_backward

    def takes(self, device: torch.device, dtype: torch.dtype) -> bool:
        return ((self.devices is None or device.type in self.devices)
                and (self.dtypes is None or dtype in self.dtypes))


_BACKENDS: dict[tuple[str, str], SSDBackend] = {}


def _recompute_backward(forward):
    def backward(grad_y, x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size):
        with torch.enable_grad():
            inputs = [t.detach().requires_grad_(True) for t in (x, dt, A, B, C, D, dt_bias)]
            y = forward(*inputs, dt_softplus, chunk_size)
            grads = torch.autograd.grad(y, inputs, grad_y.to(y.dtype), allow_unused=True)
        return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs))
    return backward


def register_ssd_backend(form: str, name: str, forward: Callable, backward: Optional[Callable] = None,
                         devices: Optional[Sequence[str]] = None, priority: int = 0,
                         dtypes: Optional[Sequence[torch.dtype]] = None) -> None:
    """Add a backend for ``form`` ("causal" or "noncausal") on ``devices`` with input ``dtypes`` (None: any).
    Without ``backward`` the gradient is autograd through a recomputed ``forward``; an explicit ``backward`` runs
    through its own opaque op, so that torch.compile's AOT autograd never traces into it."""
    if form not in FORMS:
        raise ValueError(f"unknown SSD form {form!r}; valid: {', '.join(FORMS)}")
    _BACKENDS[form, name] = SSDBackend(name, form, forward, backward or _recompute_backward(forward), devices,
                                       dtypes, priority, backward is not None)


def list_ssd_backends(form: str = "causal") -> list[str]:
    return ["auto", *sorted(name for f, name in _BACKENDS if f == form)]


def resolve_ssd_backend(form: str, backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """Name of the backend that runs ``form`` for ``backend`` (maybe "auto") on ``device`` with inputs of ``dtype``;
    as :func:`vssm.kernels.resolve_backend`: a named backend that does not take the dtype (the Triton kernels and
    float64) hands over to what "auto" picks for it."""
    if backend != "auto":
        if (form, backend) not in _BACKENDS:
            raise ValueError(f"unknown {form} SSD backend {backend!r}; valid: {', '.join(list_ssd_backends(form))}")
        devices = _BACKENDS[form, backend].devices
        if devices is not None and device.type not in devices:
            raise ValueError(f"SSD backend {backend!r} runs on {'/'.join(devices)} tensors, got {device.type}")
        if _BACKENDS[form, backend].takes(device, dtype):
            return backend
    usable = [b for (f, _), b in _BACKENDS.items() if f == form and b.takes(device, dtype)]
    return max(usable, key=lambda b: b.priority).name


register_ssd_backend("causal", "reference", ssd_causal_reference, priority=0)
register_ssd_backend("causal", "chunked", ssd_causal_chunked, priority=10)
register_ssd_backend("noncausal", "reference", ssd_noncausal_reference, priority=0)
register_ssd_backend("noncausal", "chunked", ssd_noncausal_chunked, priority=10)

try:  # Triton kernels of the non-causal form (CUDA tensors; CPU only under TRITON_INTERPRET=1)
    from . import triton_ssd as _triton_ssd
except ImportError:  # pragma: no cover
    _triton_ssd = None
else:
    register_ssd_backend("noncausal", "triton", _triton_ssd.forward, _triton_ssd.backward, devices=("cuda",),
                         priority=20, dtypes=_triton_ssd.DTYPES)


# ---- custom ops -----------------------------------------------------------------------------------------

@torch.library.custom_op("vssm::ssd", mutates_args=())
def _ssd_op(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
            dt_bias: torch.Tensor, dt_softplus: bool, form: str, chunk_size: int, backend: str) -> torch.Tensor:
    y = _BACKENDS[form, backend].forward(x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size)
    return y.to(x.dtype).contiguous()


@_ssd_op.register_fake
def _(x, dt, A, B, C, D, dt_bias, dt_softplus, form, chunk_size, backend):
    return x.new_empty(x.shape)  # contiguous


@torch.library.custom_op("vssm::ssd_backward", mutates_args=())
def _ssd_backward_op(
        grad_y: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
        D: torch.Tensor, dt_bias: torch.Tensor, dt_softplus: bool, form: str, chunk_size: int, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    grads = _BACKENDS[form, backend].backward(grad_y, x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size)
    return tuple(g.to(t.dtype).contiguous() for g, t in zip(grads, (x, dt, A, B, C, D, dt_bias)))


@_ssd_backward_op.register_fake
def _(grad_y, x, dt, A, B, C, D, dt_bias, dt_softplus, form, chunk_size, backend):
    return tuple(t.new_empty(t.shape) for t in (x, dt, A, B, C, D, dt_bias))


def _setup_context(ctx, inputs, output):
    *tensors, dt_softplus, form, chunk_size, backend = inputs
    ctx.save_for_backward(*tensors)
    ctx.args = (dt_softplus, form, chunk_size, backend)


def _backward(ctx, grad_y):
    dt_softplus, form, chunk_size, backend = ctx.args
    saved = ctx.saved_tensors  # read once (activation checkpointing allows one unpack)
    if _BACKENDS[form, backend].opaque_backward:
        grads = torch.ops.vssm.ssd_backward(grad_y.contiguous(), *saved, *ctx.args)
    else:
        grads = _BACKENDS[form, backend].backward(grad_y.contiguous(), *saved, dt_softplus, chunk_size)
        grads = tuple(g.to(t.dtype) for g, t in zip(grads, saved))
    return (*grads, None, None, None, None)


_ssd_op.register_autograd(_backward, setup_context=_setup_context)


def ssd_flops(x_shape, B_shape, form: str, chunk_size: int) -> int:
    """FLOPs of the matrix products of the chunked algorithms, 2 per multiply-add (torch's matmul convention).
    With ``b, L, H, P, G, N`` and chunk ``T = min(chunk, L)``: non-causal ``4 b L H N P`` (state and read-out);
    causal adds ``2 b L T (G N + H P)`` (the in-chunk ``C B^T`` and its product with ``x``)."""
    batch, length, heads, dim = x_shape
    groups, n_state = B_shape[2], B_shape[3]
    flops = 4 * batch * length * heads * n_state * dim
    if form == "causal":
        T = max(1, min(chunk_size, length))
        flops += 2 * batch * length * T * (groups * n_state + heads * dim)
    return flops


@register_flop_formula(torch.ops.vssm.ssd)
def _ssd_flop_formula(x_shape, dt_shape, A_shape, B_shape, C_shape, D_shape, dt_bias_shape, dt_softplus, form,
                      chunk_size, backend, *args, out_shape=None, **kwargs) -> int:
    return ssd_flops(x_shape, B_shape, form, chunk_size)


# ---- entry points ---------------------------------------------------------------------------------------

def _check_inputs(fn, x, dt, A, B, C, D, dt_bias):
    def shape_error(what):
        shapes = ", ".join(f"{n}={tuple(t.shape) if t is not None else None}" for n, t in
                           (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("dt_bias", dt_bias)))
        return ValueError(f"{fn}: {what}; expected x (batch, L, H, P), dt (batch, L, H), A (H,), "
                          f"B, C (batch, L, G, N) with G dividing H, D, dt_bias (H,); got {shapes}")

    for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("dt_bias", dt_bias)):
        if t is None:
            continue
        if not t.is_floating_point():
            raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{fn}: {name} is on {t.device} but x is on {x.device}")
    if x.dim() != 4:
        raise shape_error("x must be (batch, L, H, P)")
    batch, length, heads, _ = x.shape
    if dt.shape != (batch, length, heads):
        raise shape_error("dt must be (batch, L, H)")
    if A.shape != (heads,):
        raise shape_error("A must be (H,): one decay per head")
    if B.dim() != 4 or B.shape[:2] != (batch, length) or C.shape != B.shape:
        raise shape_error("B and C must both be (batch, L, G, N)")
    if B.shape[2] == 0 or heads % B.shape[2]:
        raise shape_error(f"the {heads} heads are not divisible by the {B.shape[2]} groups of B/C")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None and t.shape != (heads,):
            raise shape_error(f"{name} must be (H,)")


def _run(form, fn, x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size, backend):
    _check_inputs(fn, x, dt, A, B, C, D, dt_bias)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{fn}: chunk_size must be a positive int, got {chunk_size!r}")
    name = resolve_ssd_backend(form, backend, x.device, x.dtype)
    heads = x.shape[2]
    D = A.new_zeros(heads) if D is None else D
    dt_bias = A.new_zeros(heads) if dt_bias is None else dt_bias
    if torch.onnx.is_in_onnx_export():  # the PyTorch form lowers to standard ONNX ops; the custom op has none
        return _BACKENDS[form, "chunked"].forward(x, dt, A, B, C, D, dt_bias, bool(dt_softplus), chunk_size)
    return torch.ops.vssm.ssd(x, dt, A, B, C, D, dt_bias, bool(dt_softplus), form, chunk_size, name)


def ssd_causal(x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, chunk_size=64, backend="auto"):
    """Causal SSD (Mamba-2): shapes and recurrence in the module docstring. ``chunk_size`` is the chunk length
    ``T`` of the chunked backend (the last chunk may be shorter). Returns ``(batch, L, H, P)`` in ``x``'s dtype
    (float32 state, float64 for float64 inputs)."""
    return _run("causal", "ssd_causal", x, dt, A, B, C, D, dt_bias, dt_softplus, chunk_size, backend)


def ssd_noncausal(x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, backend="auto"):
    """Non-causal SSD (VSSD): ``y_t = C_t sum_s dt_s A B_s x_s^T + D x_t``; shapes in the module docstring.
    Returns ``(batch, L, H, P)`` in ``x``'s dtype."""
    return _run("noncausal", "ssd_noncausal", x, dt, A, B, C, D, dt_bias, dt_softplus, 1, backend)


def ssd_bidirectional(x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, chunk_size=64, backend="auto"):
    """Causal SSD forward over the first ``H / 2`` heads and over the reversed sequence for the others (VSSD's
    bidirectional option). B and C: one group (shared by both halves) or an even number (first half forward)."""
    _check_inputs("ssd_bidirectional", x, dt, A, B, C, D, dt_bias)
    heads, groups = x.shape[2], B.shape[2]
    if heads % 2 or (groups > 1 and groups % 2):
        raise ValueError(f"ssd_bidirectional: needs an even number of heads and one or an even number of groups, "
                         f"got H={heads}, G={groups}")
    h, g = heads // 2, max(groups // 2, 1)

    def half(t, i, n):  # heads / groups are dim 0 of A, D, dt_bias and dim 2 of the others
        return None if t is None else t.narrow(0 if t.dim() == 1 else 2, i * n, n)

    def part(i):
        bc = (B, C) if groups == 1 else (half(B, i, g), half(C, i, g))
        return (half(x, i, h), half(dt, i, h), half(A, i, h), *bc, half(D, i, h), half(dt_bias, i, h))

    fwd = ssd_causal(*part(0), dt_softplus=dt_softplus, chunk_size=chunk_size, backend=backend)
    bwd_in = [t if t is None or t.dim() == 1 else t.flip(1) for t in part(1)]
    bwd = ssd_causal(*bwd_in, dt_softplus=dt_softplus, chunk_size=chunk_size, backend=backend).flip(1)
    return torch.cat([fwd, bwd], dim=2)
