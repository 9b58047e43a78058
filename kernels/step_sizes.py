"""The step-size (dt) projection of the visual SSMs: low-rank ``dt (batch, K, R, L)`` times ``dt_proj (K, C_k, R)``,
as one matrix product per sequence over all ``batch * L`` steps. Shared by :func:`vssm.kernels.scan2d` (the PyTorch
path) and the fused Triton op (kernels/triton_scan.py), which also needs the padded operands for its backward."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["project_step_sizes", "rank_padded_operands", "steps_from_operands"]


def rank_padded_operands(low: torch.Tensor, dt_proj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight (K, C_k, R8), low (K, R8, batch*L))`` in ``low``'s dtype, the rank zero-padded to a multiple of 8 on
    CUDA, where cuBLAS takes its fast kernels only for such ranks (docs/performance.md). Off CUDA the rank stays as
    is (no gain there, and FLOP counts on the meta device then see the true rank, as the fused op's formula)."""
    batch, K, R, length = low.shape
    pad = -R % 8 if low.is_cuda else 0
    low_t = F.pad(low.permute(1, 2, 0, 3), (0, 0, 0, 0, 0, pad)).reshape(K, R + pad, batch * length)
    return F.pad(dt_proj.to(low.dtype), (0, pad)), low_t


def steps_from_operands(weight: torch.Tensor, low: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """The step sizes ``(batch, K*C_k, L)`` from :func:`rank_padded_operands`, laid out ``(K*C_k, batch, L)``."""
    return torch.bmm(weight, low).view(weight.shape[0] * weight.shape[1], batch, length).transpose(0, 1)


def project_step_sizes(low: torch.Tensor, dt_proj: torch.Tensor) -> torch.Tensor:
    """Step sizes ``(batch, K*C_k, L)`` from the low-rank dt ``(batch, K, R, L)`` and ``dt_proj (K, C_k, R)``,
    in ``low``'s dtype: ``delta[b, k*C_k + d, l] = sum_r dt_proj[k, d, r] low[b, k, r, l]``. Laid out
    ``(K*C_k, batch, L)`` in memory; the Triton kernels read any such layout."""
    return steps_from_operands(*rank_padded_operands(low, dt_proj), low.shape[0], low.shape[3])
