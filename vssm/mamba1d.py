"""The Mamba-1 mixer over token sequences, shared by the plain (ViT-like) families Vim and Mamba-ND.

:class:`MambaMixer` is the selective-state-space layer of Mamba (Gu & Dao, 2023): in-projection to x and z,
causal depthwise conv1d (with bias) + SiLU, x-projection to the low-rank step size dt and to B, C (d_state N),
dt projection (+ bias, softplus inside the scan), the selective scan of :func:`vssm.kernels.selective_scan`,
z gate ``y * silu(z)``, out-projection. Its parameter names are those of the official ``mamba_ssm`` module
(``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``; Vim's backward direction
adds ``conv1d_b``, ``x_proj_b``, ``dt_proj_b``, ``A_b_log``, ``D_b``), so official checkpoints map by prefix.

With ``bidirectional=True`` (Vim's "bimamba v2") the sequence is also scanned reversed, by its own conv1d,
projections, A and D; both directions run as ONE grouped selective-scan call (two groups of ``d_inner``
channels), and ``(y_f + flip(y_b)) * silu(z)`` (halved with ``divide_out``) goes to the shared out-projection.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function
from timm.models import checkpoint_seq
from timm.models._features import feature_take_indices

from . import kernels
from ._backbone import FamilyModel
from .layers import _dt_init

__all__ = ["MambaMixer", "PlainMambaModel"]

_BACKWARD_SUFFIX = "_b"  # official names of the backward direction's parameters: conv1d_b, x_proj_b, A_b_log, ...


@register_notrace_function  # shape checks and views on the sequence length: a leaf for torch.fx
def grouped_scan(u: torch.Tensor, x_dbl: torch.Tensor, dt_weight: torch.Tensor, A: torch.Tensor, D: torch.Tensor,
                 delta_bias: torch.Tensor, backend: str) -> torch.Tensor:
    """Selective scan of K sequence groups in one call.

    ``u (B, K*E, L)`` conv outputs, ``x_dbl (B, K, R + 2N, L)`` their x-projections, ``dt_weight (K, E, R)``,
    ``A (K*E, N)``, ``D`` and ``delta_bias (K*E,)`` -> ``y (B, K, E, L)`` (each group in its own order)."""
    K, E, R = dt_weight.shape
    N = A.shape[1]
    dt, B, C = torch.split(x_dbl, [R, N, N], dim=2)
    delta = torch.einsum("bkrl,ker->bkel", dt, dt_weight.to(dt.dtype)).flatten(1, 2)
    y = kernels.selective_scan(u, delta.to(u.dtype), A, B.contiguous(), C.contiguous(), D=D, delta_bias=delta_bias,
                               delta_softplus=True, backend=backend)
    return y.unflatten(1, (K, E))


class MambaMixer(nn.Module):
    """Mamba-1 mixer ``(B, L, C) -> (B, L, C)`` (causal along L; see the module docstring).

    Args:
        dim: token channels C.  d_state: SSM state size N.  d_conv: causal conv kernel.
        expand: inner channels ``E = expand * dim``.  dt_rank: rank of the dt projection, ``"auto"`` =
            ``ceil(dim / 16)``.  conv_bias: conv1d bias.  bias: in/out-projection bias.
        bidirectional: also scan the reversed sequence with its own parameters (Vim).
        divide_out: halve the sum of the two directions (Vim's ``div2``).
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor: Mamba's dt initialisation.
        backend: selective-scan backend of :func:`vssm.kernels.selective_scan`.
    """

    def __init__(
            self,
            dim: int,
            d_state: int = 16,
            d_conv: int = 4,
            expand: float = 2,
            dt_rank: Union[int, str] = "auto",
            conv_bias: bool = True,
            bias: bool = False,
            bidirectional: bool = False,
            divide_out: bool = True,
            dt_min: float = 0.001,
            dt_max: float = 0.1,
            dt_init: str = "random",
            dt_scale: float = 1.0,
            dt_init_floor: float = 1e-4,
            backend: str = "auto",
    ):
        super().__init__()
        if d_conv < 1:
            raise ValueError(f"MambaMixer: d_conv must be at least 1, got {d_conv}")
        self.dim = dim
        self.d_inner = d_inner = int(expand * dim)
        self.d_state = d_state
        self.d_conv = d_conv
        self.dt_rank = dt_rank = int(math.ceil(dim / 16) if dt_rank == "auto" else dt_rank)
        self.bidirectional = bidirectional
        self.divide_out = divide_out
        self.backend = backend
        self.suffixes = ("", _BACKWARD_SUFFIX) if bidirectional else ("",)

        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=bias)
        for s in self.suffixes:
            self.add_module("conv1d" + s, nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1,
                                                    bias=conv_bias))
            self.add_module("x_proj" + s, nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False))
            dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
            weight, bias_ = _dt_init(dt_rank, d_inner, dt_scale, dt_init, dt_min, dt_max, dt_init_floor)
            with torch.no_grad():
                dt_proj.weight.copy_(weight)
                dt_proj.bias.copy_(bias_)
            dt_proj.bias._no_reinit = True
            self.add_module("dt_proj" + s, dt_proj)
            # S4D-real init A = -(1..N), kept as log (float32); D skip = 1
            A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)))
            D = nn.Parameter(torch.ones(d_inner))
            A_log._no_weight_decay = D._no_weight_decay = True
            self.register_parameter("A" + s + "_log", A_log)
            self.register_parameter("D" + s, D)
        self.out_proj = nn.Linear(d_inner, dim, bias=bias)

    def _stacked(self, name: str) -> list:
        return [getattr(self, name.format(s)) for s in self.suffixes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = x.transpose(1, 2)  # (B, E, L)
        u = torch.cat([x, x.flip(-1)], dim=1) if self.bidirectional else x  # (B, K*E, L), each in its order
        convs = self._stacked("conv1d{}")
        weight = torch.cat([c.weight for c in convs])
        bias = torch.cat([c.bias for c in convs]) if convs[0].bias is not None else None
        u = F.silu(F.conv1d(F.pad(u, (self.d_conv - 1, 0)), weight, bias, groups=weight.shape[0]))  # causal
        x_proj = torch.stack([p.weight for p in self._stacked("x_proj{}")])  # (K, R + 2N, E)
        x_dbl = torch.einsum("bkel,kce->bkcl", u.unflatten(1, (len(self.suffixes), self.d_inner)), x_proj.to(u.dtype))
        dt_projs = self._stacked("dt_proj{}")
        A = -torch.exp(torch.cat([a.float() for a in self._stacked("A{}_log")]))
        D = torch.cat([d.float() for d in self._stacked("D{}")])
        delta_bias = torch.cat([p.bias.float() for p in dt_projs])
        y = grouped_scan(u, x_dbl, torch.stack([p.weight for p in dt_projs]), A, D, delta_bias, self.backend)
        if self.bidirectional:
            y = y[:, 0] + y[:, 1].flip(-1)
            if self.divide_out:
                y = y / 2
        else:
            y = y[:, 0]
        y = y.transpose(1, 2) * F.silu(z)
        return self.out_proj(y)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, d_inner={self.d_inner}, d_state={self.d_state}, dt_rank={self.dt_rank}, "
                f"d_conv={self.d_conv}, bidirectional={self.bidirectional}")


class PlainMambaModel(FamilyModel):
    """timm API shared by the plain (one-width, ViT-like) families: ``patch_embed`` -> ``layers`` -> ``norm``.

    A family calls ``super().__init__(in_chans, num_classes, global_pool, embed_dim, min_input_size)``, sets
    ``patch_embed``, ``layers`` (an ``nn.Sequential``), ``norm``, ``head``, ``feature_info`` (one entry per layer)
    and implements :meth:`embed` (image -> first layer's input), :meth:`layer_map` (a layer's output -> NCHW map),
    ``forward_features``, :meth:`forward_head` and ``forward`` (in the family's own file: torch.fx wraps the
    registered no-trace helpers in the globals of the file that holds the traced ``forward``).
    """

    grad_checkpointing = False

    def __init__(self, in_chans: int, num_classes: int, global_pool: str, embed_dim: int, min_input_size: int):
        super().__init__()
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = self._check_pool(global_pool)
        self.min_input_size = min_input_size
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim

    def embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Image -> (first layer's input, patch grid ``(h, w)``); checks the input."""
        raise NotImplementedError

    def layer_map(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """A layer's output (on a ``grid`` of patches) -> ``(B, C, h, w)``."""
        raise NotImplementedError

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {"pos_embed", "cls_token"} | super().no_weight_decay()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=[(r"^layers\.(\d+)", None), (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            self.global_pool = self._check_pool(global_pool)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _check_pool(self, global_pool: str) -> str:
        if global_pool not in self.pool_types:
            raise ValueError(f"{type(self).__name__}: global_pool must be one of {self.pool_types}, "
                             f"got {global_pool!r}")
        return global_pool

    def forward_layers(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.layers, x)
        return self.layers(x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward returning the outputs of the layers in ``indices`` (int: the last n; None: all) as NCHW
        (or NHWC) token maps; ``norm`` applies the final norm to them."""
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        layers = self.layers if (torch.jit.is_scripting() or not stop_early) else self.layers[:max_index + 1]
        x, grid = self.embed(x)
        intermediates = []
        for i, layer in enumerate(layers):
            x = layer(x)
            if i in take_indices:
                y = self.layer_map(self.norm(x) if norm else x, grid)
                intermediates.append(y if output_fmt == "NCHW" else y.permute(0, 2, 3, 1))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the layers (and norm / head) not needed for the intermediates in ``indices``."""
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        self.layers = self.layers[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take_indices
