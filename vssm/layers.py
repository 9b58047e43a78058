"""Building blocks shared by the vssm model families (VMamba, LocalMamba, EfficientVMamba, GroupMamba).

Layout convention: every block here takes and returns channels-last maps ``(B, H, W, C)``; only the
stems take an image ``(B, C, H, W)``. Projections are ``nn.Linear`` so official Linear / Linear2d weights
load without reshaping, norms are ``nn.LayerNorm`` over the last dim (identical math to the official
channel-first ``LayerNorm2d`` of the releases).

``SS2D`` is the 2D selective-scan mixer: in-projection, optional z gate, depthwise conv, a scan pattern
from :mod:`vssm.scans` (K one-dimensional token orders), the grouped selective scan from :mod:`vssm.kernels`,
an output norm and an out-projection. Its parameter names (``in_proj``, ``conv2d``, ``x_proj_weight``,
``dt_projs_weight``, ``dt_projs_bias``, ``A_logs``, ``Ds``, ``out_norm``, ``out_proj``) follow the
official releases so checkpoints of every family map onto it by prefix only.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from timm.layers import DropPath, Mlp, register_notrace_function, register_notrace_module, to_2tuple, trunc_normal_

from . import kernels
from . import scans

__all__ = [
    "PatchEmbedNHWC", "ConvStem", "PatchMerging", "ConvDownsample", "build_downsample",
    "Mlp", "DropPath", "RecomputedActivation", "SS2D", "VSSBlock", "init_vssm_weights", "ssm_no_weight_decay",
    "Attention", "window_partition", "window_reverse",
]

NormLayer = Type[nn.Module]


def _conv_nhwc(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply an NCHW conv to a channels-last ``(B, H, W, C)`` tensor, returning ``(B, H, W, C')``."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


# --------------------------------------------------------------------------------------------------
# stems: image (B, C, H, W) -> tokens (B, H/4, W/4, C)
# --------------------------------------------------------------------------------------------------

class PatchEmbedNHWC(nn.Module):
    """Image ``(B, C, H, W)`` -> channels-last patch tokens ``(B, h, w, embed_dim)``: ``patch_size`` conv + norm
    (VMamba v0 / LocalMamba / EfficientVMamba stem; Vim's and Mamba-ND's patch embedding without the norm).

    ``stride``: conv stride (default ``patch_size``; smaller: overlapping patches, Vim's stride-8 models).
    ``pad``: zero-pad the bottom/right up to a multiple of the stride first (Mamba-ND, mmcv's corner padding);
    without it the conv floors."""

    def __init__(self, in_chans: int = 3, embed_dim: int = 96, patch_size: int = 4,
                 norm_layer: Optional[NormLayer] = nn.LayerNorm, stride: Optional[int] = None, pad: bool = False):
        super().__init__()
        self.patch_size = patch_size
        self.stride = stride or patch_size
        self.pad = pad
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=self.stride)
        self.norm = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (0, -x.shape[-1] % self.stride, 0, -x.shape[-2] % self.stride))
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class ConvStem(nn.Module):
    """Two overlapping stride-``patch_size/2`` convs with norm + GELU between (VMamba v2 / EfficientVMamba).

    For ``patch_size=4``: conv3x3/s2 -> norm -> GELU -> conv3x3/s2 -> norm. Output size ``ceil(ceil(H/2)/2)``.
    """

    def __init__(self, in_chans: int = 3, embed_dim: int = 96, patch_size: int = 4,
                 norm_layer: Optional[NormLayer] = nn.LayerNorm, act_layer: Type[nn.Module] = nn.GELU):
        super().__init__()
        stride = patch_size // 2
        kernel = stride + 1
        mid = embed_dim // 2
        self.patch_size = patch_size
        self.conv1 = nn.Conv2d(in_chans, mid, kernel_size=kernel, stride=stride, padding=1)
        self.norm1 = norm_layer(mid) if norm_layer else nn.Identity()
        self.act = act_layer()
        self.conv2 = nn.Conv2d(mid, embed_dim, kernel_size=kernel, stride=stride, padding=1)
        self.norm2 = norm_layer(embed_dim) if norm_layer else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(self.conv1(x).permute(0, 2, 3, 1))
        x = self.act(x).permute(0, 3, 1, 2)
        return self.norm2(self.conv2(x).permute(0, 2, 3, 1))


# --------------------------------------------------------------------------------------------------
# downsamples: (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), C_out)
# --------------------------------------------------------------------------------------------------

@register_notrace_module  # pads odd maps (control flow on the shape): a leaf for torch.fx
class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> norm(4C) -> linear (VMamba v0 "v1" downsample, Swin style).

    Odd sizes are zero-padded at the bottom/right. Concat order: (even row, even col), (odd row, even col),
    (even row, odd col), (odd row, odd col), as in the official releases.
    """

    def __init__(self, dim: int, out_dim: Optional[int] = None, norm_layer: NormLayer = nn.LayerNorm):
        super().__init__()
        out_dim = out_dim or 2 * dim
        self.norm = norm_layer(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[1:3]
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class ConvDownsample(nn.Module):
    """Strided conv -> norm. ``kernel_size=2`` (no padding) is VMamba "v2", ``kernel_size=3`` (padding 1) "v3"."""

    def __init__(self, dim: int, out_dim: Optional[int] = None, kernel_size: int = 3,
                 norm_layer: NormLayer = nn.LayerNorm):
        super().__init__()
        out_dim = out_dim or 2 * dim
        self.conv = nn.Conv2d(dim, out_dim, kernel_size=kernel_size, stride=2, padding=(kernel_size - 1) // 2)
        self.norm = norm_layer(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(_conv_nhwc(self.conv, x))


def build_downsample(kind: str, dim: int, out_dim: int, norm_layer: NormLayer = nn.LayerNorm) -> nn.Module:
    """``kind``: "merge" (v1, PatchMerging), "conv2" (v2, 2x2/s2 conv), "conv3" (v3, 3x3/s2 conv)."""
    if kind in ("merge", "v1"):
        return PatchMerging(dim, out_dim, norm_layer=norm_layer)
    if kind in ("conv2", "v2"):
        return ConvDownsample(dim, out_dim, kernel_size=2, norm_layer=norm_layer)
    if kind in ("conv3", "v3"):
        return ConvDownsample(dim, out_dim, kernel_size=3, norm_layer=norm_layer)
    raise ValueError(f"unknown downsample kind {kind!r}; valid: merge (v1), conv2 (v2), conv3 (v3)")


# --------------------------------------------------------------------------------------------------
# SS2D mixer
# --------------------------------------------------------------------------------------------------

class RecomputedActivation(nn.Module):
    """``act_layer()`` whose output a compiled training graph recomputes in the backward instead of saving it.

    The output of the MLP's GELU (the widest tensor of a block) and of SS2D's SiLU would be saved for the next
    layer's backward next to the input that the activation's own backward keeps. Under ``torch.compile`` with
    grad enabled the call is tagged for activation checkpointing, so only the input is saved and the activation
    re-runs fused into the backward kernels. Eager calls run the activation as is (there autograd would save
    the output for the next layer all the same)."""

    def __init__(self, act_layer: Type[nn.Module] = nn.GELU):
        super().__init__()
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() and torch.is_grad_enabled() and not torch.onnx.is_in_onnx_export():
            return checkpoint(self.act, x, use_reentrant=False)
        return self.act(x)


def _dt_init(dt_rank: int, d_inner: int, dt_scale: float, dt_init: str, dt_min: float, dt_max: float,
             dt_init_floor: float):
    """Mamba's dt projection init: weight U(+-rank^-0.5*scale) (or constant), bias = softplus^-1(dt),
    dt log-uniform in [dt_min, dt_max]."""
    std = dt_rank ** -0.5 * dt_scale
    weight = torch.empty(d_inner, dt_rank)
    if dt_init == "constant":
        nn.init.constant_(weight, std)
    elif dt_init == "random":
        nn.init.uniform_(weight, -std, std)
    else:
        raise ValueError(f"dt_init must be 'random' or 'constant', got {dt_init!r}")
    dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    bias = dt + torch.log(-torch.expm1(-dt))  # inverse softplus
    return weight, bias


@register_notrace_module  # a torch.fx leaf: its scan patterns index by the concrete map size
class SS2D(nn.Module):
    """2D selective-scan mixer on ``(B, H, W, C)`` maps.

    Args:
        dim: model channels C.
        scan: a scan-pattern name for :func:`vssm.scans.build` or a built ``ScanPattern`` (K sequences).
        scan_options: options for :func:`vssm.scans.build`.
        d_state: SSM state size N.  ssm_ratio: inner channels ``d_inner = int(ssm_ratio * dim)``.
        dt_rank: rank of the dt projection, ``"auto"`` = ``ceil(dim / 16)``.
        act_layer: activation after the conv (and on z).
        d_conv: depthwise conv kernel (``< 2``: no conv).  conv_bias: conv bias.
        gate: z gating (in_proj doubles its output; ``y * act(z)``); v0 style True, v2 "_noz" False.
        z_act: apply ``act_layer`` to z.
        out_norm: LayerNorm on the scan output (False: identity).
        bias: bias of in/out projections.  dropout: after out_proj.
        backend: selective-scan backend passed to :func:`vssm.kernels.selective_scan`.
        linear_layer: ``(in_features, out_features, chunks) -> module`` of the in/out projections (default
            ``nn.Linear`` with ``bias``); ``chunks`` is 2 for a gated in-projection (output ``[x, z]``), else 1.
    With ``scan.split_channels`` each of the K sequences carries ``d_inner // K`` channels (GroupMamba, which also
    passes block-diagonal projections and output norm).
    """

    def __init__(
            self,
            dim: int,
            scan: Union[str, "scans.ScanPattern"] = "cross",
            scan_options: Optional[dict] = None,
            d_state: int = 16,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = "auto",
            act_layer: Type[nn.Module] = nn.SiLU,
            d_conv: int = 3,
            conv_bias: bool = True,
            gate: bool = True,
            z_act: bool = True,
            out_norm: bool = True,
            norm_layer: NormLayer = nn.LayerNorm,
            bias: bool = False,
            dropout: float = 0.0,
            dt_min: float = 0.001,
            dt_max: float = 0.1,
            dt_init: str = "random",
            dt_scale: float = 1.0,
            dt_init_floor: float = 1e-4,
            backend: str = "auto",
            linear_layer: Optional[Callable[[int, int, int], nn.Module]] = None,
    ):
        super().__init__()
        if linear_layer is None:
            def linear_layer(in_features: int, out_features: int, chunks: int) -> nn.Module:
                return nn.Linear(in_features, out_features, bias=bias)
        self.scan = scans.build(scan, **(scan_options or {})) if isinstance(scan, str) else scan
        K = self.scan.K
        self.dim = dim
        self.d_inner = d_inner = int(ssm_ratio * dim)
        self.d_state = d_state
        self.dt_rank = dt_rank = int(math.ceil(dim / 16) if dt_rank == "auto" else dt_rank)
        self.gate = gate
        self.backend = backend
        d_seq = self.scan.channels_per_sequence(d_inner)  # channels each of the K sequences carries
        self.d_seq = d_seq

        self.in_proj = linear_layer(dim, d_inner * 2 if gate else d_inner, 2 if gate else 1)
        self.act = RecomputedActivation(act_layer)
        self.z_act = act_layer() if (gate and z_act) else nn.Identity()
        if d_conv > 1:
            self.conv2d = nn.Conv2d(d_inner, d_inner, kernel_size=d_conv, padding=(d_conv - 1) // 2,
                                    groups=d_inner, bias=conv_bias)
        else:
            self.conv2d = None

        # per-sequence projections: x -> (dt low-rank, B, C); dt low-rank -> per-channel dt
        x_proj = torch.empty(K, dt_rank + 2 * d_state, d_seq)
        bound = 1.0 / math.sqrt(d_seq)  # nn.Linear's default (kaiming-uniform, a=sqrt(5)) range
        nn.init.uniform_(x_proj, -bound, bound)
        self.x_proj_weight = nn.Parameter(x_proj)
        dt = [_dt_init(dt_rank, d_seq, dt_scale, dt_init, dt_min, dt_max, dt_init_floor) for _ in range(K)]
        self.dt_projs_weight = nn.Parameter(torch.stack([w for w, _ in dt]))  # (K, d_seq, R)
        self.dt_projs_bias = nn.Parameter(torch.stack([b for _, b in dt]))  # (K, d_seq)
        # S4D-real init A = -(1..N), kept as log; D skip = 1
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(K * d_seq, 1)
        self.A_logs = nn.Parameter(torch.log(A))  # (K * d_seq, N)
        self.Ds = nn.Parameter(torch.ones(K * d_seq))  # (K * d_seq,)
        for p in (self.A_logs, self.Ds, self.dt_projs_bias):
            p._no_weight_decay = True

        self.out_norm = norm_layer(d_inner) if out_norm else nn.Identity()
        self.out_proj = linear_layer(d_inner, dim, 1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def ssm_parameters(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``A = -exp(A_logs)`` ``(K*d_seq, N)``, ``D`` and ``delta_bias`` ``(K*d_seq,)``, float32."""
        return -torch.exp(self.A_logs.float()), self.Ds.float(), self.dt_projs_bias.reshape(-1).float()

    def project_sequences(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, d_inner, H, W)`` -> low-rank ``dt (B, K, dt_rank, L)`` (``dt_projs_weight`` maps it to the step
        sizes), ``B, C (B, K, N, L)``, in sequence order.

        The K per-sequence projections are pointwise: where every sequence covers the map they run on the 2D
        map (no K copies of it) and only their ``dt_rank + 2N`` outputs per token are gathered into each
        sequence's order; where each sequence covers a part (atrous), on the gathered tokens."""
        Bsz, _, H, W = x.shape
        K, R, N = self.scan.K, self.dt_rank, self.d_state
        if not self.scan.sequences_cover_map:
            x_dbl = torch.einsum("bkdl,kcd->bkcl", self.scan.flatten(x), self.x_proj_weight)
        elif self.scan.split_channels:  # sequence k projects its own channel group
            x_dbl = self.scan.gather(torch.einsum("bkdhw,kcd->bkchw", x.reshape(Bsz, K, self.d_seq, H, W),
                                                  self.x_proj_weight))
        else:
            x_dbl = self.scan.gather(torch.einsum("bdhw,kcd->bkchw", x, self.x_proj_weight))
        dts, Bs, Cs = torch.split(x_dbl.to(x.dtype), [R, N, N], dim=2)
        return dts.contiguous(), Bs.contiguous(), Cs.contiguous()

    def scan_sequences(self, x: torch.Tensor, dts: torch.Tensor, Bs: torch.Tensor, Cs: torch.Tensor) -> torch.Tensor:
        """Selective scan of the K sequences of ``x (B, d_inner, H, W)``, outputs summed at their positions:
        ``(B, d_inner, H, W)`` in x's dtype (summed in float32, rounded once). One fused :func:`vssm.kernels.scan2d`,
        which also projects the low-rank ``dts`` to the step sizes (no ``(B, K*d_seq, L)`` delta tensor is saved
        for the backward). Subclasses with another fusion of the K directions override this."""
        return self.fused_scan(x, dts, Bs, Cs)

    def fused_scan(self, x: torch.Tensor, dts: torch.Tensor, Bs: torch.Tensor, Cs: torch.Tensor,
                   per_sequence: bool = False) -> torch.Tensor:
        """:func:`vssm.kernels.scan2d` of ``x`` with this mixer's SSM parameters, output in x's dtype: the K outputs
        summed ``(B, d_inner, H, W)``, or apart ``(B, K, d_seq, H, W)`` with ``per_sequence``."""
        A, D, delta_bias = self.ssm_parameters()
        return kernels.scan2d(x, dts, A, Bs, Cs, D, delta_bias, pattern=self.scan, backend=self.backend,
                              dt_proj=self.dt_projs_weight, out_dtype=x.dtype, per_sequence=per_sequence)

    def scan_core(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, d_inner, H, W)`` -> ``(B, d_inner, H, W)`` (float32 or x's dtype): project, scan, merge."""
        return self.scan_sequences(x, *self.project_sequences(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_proj(x)
        if self.gate:
            x, z = x.chunk(2, dim=-1)
            z = self.z_act(z)
        x = x.permute(0, 3, 1, 2)  # (B, d_inner, H, W), channels-last strides
        if self.conv2d is not None:
            x = self.conv2d(x)
        x = self.act(x)
        y = self.scan_core(x).permute(0, 2, 3, 1).to(x.dtype)
        y = self.out_norm(y)
        if self.gate:
            y = y * z
        return self.dropout(self.out_proj(y))


class VSSBlock(nn.Module):
    """Pre-norm residual block: ``x + drop_path(mixer(norm1(x)))`` then, if ``mlp_ratio > 0``,
    ``x + drop_path(mlp(norm2(x)))``. ``mixer_kwargs`` go to :class:`SS2D` (or ``mixer_layer``)."""

    def __init__(
            self,
            dim: int,
            drop_path: float = 0.0,
            norm_layer: NormLayer = nn.LayerNorm,
            mlp_ratio: float = 4.0,
            mlp_act_layer: Type[nn.Module] = nn.GELU,
            mlp_drop: float = 0.0,
            mixer_layer: Callable[..., nn.Module] = SS2D,
            **mixer_kwargs,
    ):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.mixer = mixer_layer(dim, **mixer_kwargs)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if mlp_ratio > 0:
            self.norm2 = norm_layer(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=partial(RecomputedActivation, mlp_act_layer),
                           drop=mlp_drop)
            self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        else:
            self.norm2 = self.mlp = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.mixer(self.norm1(x)))
        if self.mlp is not None:
            x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


def init_vssm_weights(module: nn.Module) -> None:
    """Model-level init of the official releases: Linear trunc-normal(0.02) with zero bias, LayerNorm 1/0.
    Convs keep PyTorch's default; the SSM parameters keep their own init (they are not Linear modules)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def ssm_no_weight_decay(model: nn.Module) -> set:
    """Full names of parameters flagged ``_no_weight_decay`` (A_logs, Ds, dt_projs_bias, ...)."""
    return {name for name, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}


# --------------------------------------------------------------------------------------------------
# windows and attention (hybrid families: MambaVision, and the SSD / attention hybrids)
# --------------------------------------------------------------------------------------------------

@register_notrace_function
def window_partition(x: torch.Tensor, window_size: Union[int, Sequence[int]]) -> torch.Tensor:
    """``(B, H, W, C)`` -> windows ``(B * nh * nw, wh * ww, C)``, tokens row-major inside each window, windows
    ordered (batch, window row, window column). The map is zero-padded at the bottom / right to multiples of
    the window (``nh = ceil(H / wh)``, ``nw = ceil(W / ww)``); :func:`window_reverse` crops the padding off."""
    wh, ww = to_2tuple(window_size)
    B, H, W, C = x.shape
    pad_b, pad_r = (wh - H % wh) % wh, (ww - W % ww) % ww
    x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    nh, nw = (H + pad_b) // wh, (W + pad_r) // ww
    x = x.view(B, nh, wh, nw, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B * nh * nw, wh * ww, C)


@register_notrace_function
def window_reverse(windows: torch.Tensor, window_size: Union[int, Sequence[int]], H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: windows ``(B * nh * nw, wh * ww, C)`` of an ``H x W`` map ->
    ``(B, H, W, C)`` (the padding cropped off)."""
    wh, ww = to_2tuple(window_size)
    nh, nw = -(-H // wh), -(-W // ww)
    C = windows.shape[-1]
    x = windows.reshape(-1, nh, nw, wh, ww, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, nh * wh, nw * ww, C)
    return x[:, :H, :W].contiguous()


class Attention(nn.Module):
    """Multi-head self-attention over tokens ``(B, N, C)`` through ``F.scaled_dot_product_attention``.

    Parameter names as timm's ViT (``qkv``, ``q_norm`` / ``k_norm`` with ``qk_norm``, ``proj``), so ViT-style
    official checkpoints load by prefix. ``attn_drop`` is applied in training mode only."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, qk_norm: bool = False,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, norm_layer: NormLayer = nn.LayerNorm):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Attention: dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = norm_layer(self.head_dim) if qk_norm else nn.Identity()
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v,
                                           dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))
