"""MambaVision: a hybrid Mamba-Transformer vision backbone, as a timm model family.

Paper: "MambaVision: A Hybrid Mamba-Transformer Vision Backbone" (Hatamizadeh & Kautz, CVPR 2025),
https://arxiv.org/abs/2407.08083. Official code and weights: https://github.com/NVlabs/MambaVision (code under
the NVIDIA Source Code License-NC, weights CC-BY-NC-SA-4.0: non-commercial). This is an independent
implementation; ``checkpoint_filter_fn`` maps the official release checkpoints onto it, giving the official
logits (float32, max abs difference < 1e-4).

Architecture (as released):
  * stem: two 3x3/s2 convs (no bias), each with BatchNorm (eps 1e-4) and ReLU: stride 4.
  * stages 1-2: residual conv blocks (3x3 conv, BN, tanh-GELU, 3x3 conv, BN); stages 3-4: pre-norm blocks
    ``x + g1 * mixer(norm1(x))``, ``x + g2 * mlp(norm2(x))`` on windows: the map is zero-padded at the bottom /
    right to multiples of the stage's window, split into windows that every block of the stage treats as
    separate sequences, and cropped back after the last block. The first ``ceil(depth / 2)`` blocks mix with
    the MambaVision mixer, the others with multi-head self-attention. ``g1`` / ``g2`` are layer scales (B, L, L2)
    or 1.
  * MambaVision mixer: in-projection split into x and z halves, a non-causal depthwise conv1d (no bias) and
    SiLU on both, x-projection to dt (rank ``ceil(dim / 16)``) / B / C (d_state 8), the selective scan of x in
    one direction per window (the state starts at zero in every window: windows are batch items of the shared
    :func:`vssm.kernels.selective_scan`), ``out_proj(concat(y, z))``. As released, the dt projection's bias is
    added twice (by ``dt_proj`` and again as the scan's ``delta_bias``).
  * 3x3/s2 conv downsample (no bias, no norm) between stages; head: BatchNorm, average pool, Linear.

Layout: channels-last ``(B, H, W, C)`` tokens between stages; ``forward_features`` returns the last stage's
tokens after the final BatchNorm; ``forward_intermediates`` / ``features_only`` give NCHW maps at strides
4 / 8 / 16 / 32 (each stage's output before the next downsample, as the official detection backbone takes
them). Any input size works: every stride-2 conv pads (a side of n pixels gives ceil(n / 32) tokens at stride
32), windows pad as above. The window sizes are a model argument (``window_size``, one per stage; stages 1-2
ignore theirs); they change the function on maps larger than the window, and the official detection /
segmentation configs set their own.
"""
from __future__ import annotations

import math
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, register_notrace_function, register_notrace_module, trunc_normal_
from timm.models import generate_default_cfgs, register_model

from . import kernels
from ._backbone import Stage, StagedBackbone, build_family_model, imagenet_cfg, stage_dims
from ._checkpoint import match_state_dict, unwrap_state_dict
from .layers import Attention, VSSBlock, window_partition, window_reverse

__all__ = ["MambaVision", "MambaVisionStage", "MambaVisionMixer", "MambaVisionBlock", "ConvBlock",
           "checkpoint_filter_fn"]


# ------------------------------------------------------------------------------------------------------
# mixer and blocks
# ------------------------------------------------------------------------------------------------------

@register_notrace_function
def mixer_scan(x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, D: torch.Tensor,
          delta_bias: torch.Tensor, backend: str) -> torch.Tensor:
    """One-group selective scan of sequences ``x, delta (S, D, L)``, ``B, C (S, N, L)`` -> ``(S, D, L)`` (a leaf of
    torch.fx traces: the operator checks shapes in Python)."""
    return kernels.selective_scan(x, delta, A, B[:, None], C[:, None], D=D, delta_bias=delta_bias,
                                  delta_softplus=True, backend=backend)


class MambaVisionMixer(nn.Module):
    """MambaVision's Mamba mixer on sequences ``(S, L, C) -> (S, L, C)`` (S: batch x windows).

    Args:
        dim: channels C.  d_state: SSM state size N (official 8).  d_conv: depthwise conv1d kernel (official 3,
            ``'same'`` padding: non-causal).  expand: inner channels ``int(expand * dim)``, split into x and z.
        dt_rank: dt projection rank, ``"auto"`` = ``ceil(dim / 16)``.  backend: selective-scan backend.
    """

    def __init__(self, dim: int, d_state: int = 8, d_conv: int = 3, expand: float = 1.0,
                 dt_rank: Union[int, str] = "auto", backend: str = "auto"):
        super().__init__()
        d_inner = int(expand * dim)
        if d_inner % 2:
            raise ValueError(f"MambaVisionMixer: inner channels {d_inner} must be even (split into x and z)")
        half = d_inner // 2
        self.d_state = d_state
        self.dt_rank = dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = backend
        self.in_proj = nn.Linear(dim, d_inner, bias=False)
        self.conv1d_x = nn.Conv1d(half, half, d_conv, padding="same", groups=half, bias=False)
        self.conv1d_z = nn.Conv1d(half, half, d_conv, padding="same", groups=half, bias=False)
        self.x_proj = nn.Linear(half, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, half)
        # S4D-real init A = -(1..N), kept as log; D skip = 1
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32).repeat(half, 1)))
        self.D = nn.Parameter(torch.ones(half))
        self.A_log._no_weight_decay = True
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, z = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)  # (S, half, L) each
        x = F.silu(self.conv1d_x(x))
        z = F.silu(self.conv1d_z(z))
        dt, B, C = torch.split(self.x_proj(x.transpose(1, 2)), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self.dt_proj(dt).transpose(1, 2).contiguous()  # bias included here and again as delta_bias
        y = mixer_scan(x, delta, -torch.exp(self.A_log.float()), B.transpose(1, 2).contiguous(),
                  C.transpose(1, 2).contiguous(), self.D.float(), self.dt_proj.bias.float(), self.backend)
        return self.out_proj(torch.cat([y, z], dim=1).transpose(1, 2))


class MambaVisionBlock(VSSBlock):
    """:class:`vssm.layers.VSSBlock` (pre-norm mixer + MLP on ``(S, L, C)``) with optional layer scales:
    ``x + drop_path(gamma_1 * mixer(norm1(x)))``, ``x + drop_path(gamma_2 * mlp(norm2(x)))``."""

    def __init__(self, dim: int, layer_scale: Optional[float] = None, **kwargs):
        super().__init__(dim, **kwargs)
        if layer_scale is not None:
            self.gamma_1 = nn.Parameter(torch.full((dim,), float(layer_scale)))
            self.gamma_2 = nn.Parameter(torch.full((dim,), float(layer_scale)))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.mixer(self.norm1(x))
        x = x + self.drop_path1(y if self.gamma_1 is None else self.gamma_1 * y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path2(y if self.gamma_2 is None else self.gamma_2 * y)


class ConvBlock(nn.Module):
    """Residual ``x + drop_path(gamma * bn(conv(gelu_tanh(bn(conv(x))))))`` on NCHW maps (3x3 convs with bias)."""

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale: Optional[float] = None, kernel_size: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2)
        self.norm1 = nn.BatchNorm2d(dim)
        self.act1 = nn.GELU(approximate="tanh")
        self.conv2 = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2)
        self.norm2 = nn.BatchNorm2d(dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale))) if layer_scale is not None else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return x + self.drop_path(y)


@register_notrace_module  # a leaf of torch.fx traces, as nn.BatchNorm2d (whose forward checks the input's rank)
class BatchNormNHWC(nn.BatchNorm2d):
    """BatchNorm2d of a channels-last ``(B, H, W, C)`` map (state-dict compatible with ``nn.BatchNorm2d``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


# ------------------------------------------------------------------------------------------------------
# stem, stage, model
# ------------------------------------------------------------------------------------------------------

class MambaVisionStem(nn.Module):
    """3x3/s2 conv - BN(eps 1e-4) - ReLU, twice: image ``(B, C, H, W)`` -> tokens ``(B, H/4, W/4, dim)``."""

    def __init__(self, in_chans: int, hidden: int, dim: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, hidden, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(hidden, eps=1e-4),
            nn.ReLU(),
            nn.Conv2d(hidden, dim, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(dim, eps=1e-4), nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).permute(0, 2, 3, 1)


class MambaVisionStage(Stage):
    """A :class:`vssm._backbone.Stage` whose 3x3/s2 conv downsample (optional) takes ``(B, C, H, W)``;
    channels-last ``(B, H, W, C)`` in and out.

    ``mixer=False``: :class:`ConvBlock` s (NCHW inside). ``mixer=True``: the map is split into ``window_size``
    windows (zero-padded bottom / right); the first ``ceil(depth / 2)`` blocks use :class:`MambaVisionMixer`,
    the rest :class:`vssm.layers.Attention`; the windows are merged and cropped back at the end."""

    def __init__(self, dim_in: int, dim: int, mixer: bool, downsample: bool = True,
                 window_size: Union[int, Tuple[int, int]] = 7, num_heads: int = 8, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path: Sequence[float] = (), layer_scale: Optional[float] = None,
                 layer_scale_conv: Optional[float] = None, d_state: int = 8, d_conv: int = 3,
                 proj_drop: float = 0.0, attn_drop: float = 0.0, scan_backend: str = "auto"):
        if not mixer:
            blocks = [ConvBlock(dim, dp, layer_scale_conv) for dp in drop_path]
        else:
            n_mamba = (len(drop_path) + 1) // 2  # official: attention from block depth // 2 (+ 1 for odd depths) on
            common = dict(mlp_ratio=mlp_ratio, mlp_drop=proj_drop, layer_scale=layer_scale)
            mamba = dict(mixer_layer=MambaVisionMixer, d_state=d_state, d_conv=d_conv, backend=scan_backend)
            attention = dict(mixer_layer=Attention, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop,
                             proj_drop=proj_drop)
            blocks = [MambaVisionBlock(dim, drop_path=dp, **common, **(mamba if i < n_mamba else attention))
                      for i, dp in enumerate(drop_path)]
        super().__init__(blocks, nn.Conv2d(dim_in, dim, 3, stride=2, padding=1, bias=False) if downsample else None)
        self.mixer = mixer
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x.permute(0, 3, 1, 2))
        if not self.mixer:
            return self.forward_blocks(x).permute(0, 2, 3, 1)
        x = x.permute(0, 2, 3, 1)
        H, W = x.shape[1], x.shape[2]
        return window_reverse(self.forward_blocks(window_partition(x, self.window_size)), self.window_size, H, W)


def _per_stage(value, n: int, name: str) -> list:
    values = [value] * n if isinstance(value, (int, float)) else list(value)
    if len(values) != n:
        raise ValueError(f"MambaVision: {name} needs one value per stage ({n}), got {value!r}")
    return values


class MambaVision(StagedBackbone):
    """MambaVision backbone + classifier.

    Args:
        in_chans: input image channels.  num_classes: classifier outputs (0: no classifier).
        global_pool: head pooling ('avg' as released; '' / 'max' / ... as timm's ClassifierHead).
        dim: stage-1 channels (doubled per stage).  in_dim: stem hidden channels.  depths: blocks per stage.
        num_heads: attention heads per stage.  window_size: window side per stage (int or (h, w); stages that
            use conv blocks ignore theirs).  mixer_stages: which stages are Mamba/attention stages (official: 2, 3).
        mlp_ratio: MLP ratio.  qkv_bias: attention qkv bias.  d_state, ssm_conv: mixer state size / conv kernel.
        layer_scale: layer-scale init of the mixer-stage blocks (None: no layer scale).  layer_scale_conv: same
            for the conv blocks.  drop_rate: classifier dropout.  proj_drop_rate: MLP / attention output dropout.
        attn_drop_rate: attention dropout.  drop_path_rate: stochastic depth, linear over all blocks.
        scan_backend: selective-scan backend.  min_input_size: smallest accepted H / W (any size works).
        img_size: accepted for API uniformity and ignored (no position embedding).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            dim: int = 80,
            in_dim: int = 32,
            depths: Sequence[int] = (1, 3, 8, 4),
            num_heads: Union[int, Sequence[int]] = (2, 4, 8, 16),
            window_size: Union[int, Sequence[Union[int, Tuple[int, int]]]] = (8, 8, 14, 7),
            mixer_stages: Sequence[int] = (2, 3),
            mlp_ratio: float = 4.0,
            qkv_bias: bool = True,
            d_state: int = 8,
            ssm_conv: int = 3,
            layer_scale: Optional[float] = None,
            layer_scale_conv: Optional[float] = None,
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            attn_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            scan_backend: str = "auto",
            min_input_size: int = 1,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
    ):
        super().__init__(in_chans, num_classes, min_input_size)
        num_stages = len(depths)
        num_heads = _per_stage(num_heads, num_stages, "num_heads")
        window_size = [window_size] * num_stages if isinstance(window_size, int) else list(window_size)
        if len(window_size) != num_stages:
            raise ValueError(f"MambaVision: window_size needs one value per stage ({num_stages}), got {window_size}")
        bad = [w for w in window_size if min(w if isinstance(w, (tuple, list)) else (w,)) < 1]
        if bad:
            raise ValueError(f"MambaVision: window sizes must be at least 1, got {window_size}")
        self.stem = MambaVisionStem(in_chans, in_dim, dim)

        def make_stage(i: int, dim_in: int, dim_out: int, drop_path: List[float]) -> MambaVisionStage:
            return MambaVisionStage(
                dim_in, dim_out, mixer=i in mixer_stages, downsample=i > 0, window_size=window_size[i],
                num_heads=num_heads[i], mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_path=drop_path,
                layer_scale=layer_scale, layer_scale_conv=layer_scale_conv, d_state=d_state, d_conv=ssm_conv,
                proj_drop=proj_drop_rate, attn_drop=attn_drop_rate, scan_backend=scan_backend)

        self.build_stages(make_stage, stage_dims(dim, num_stages), depths, drop_path_rate)
        self.add_head(BatchNormNHWC(self.num_features), global_pool, drop_rate)
        self.apply(_init_weights)

    def checkpoint_filter(self, state_dict: Dict) -> Dict[str, torch.Tensor]:
        return checkpoint_filter_fn(state_dict, self)


def _init_weights(module: nn.Module) -> None:
    """Official init: every Linear (the mixer's dt projection too) trunc-normal(0.02) with zero bias;
    LayerNorm / BatchNorm weight 1, bias 0; convs keep PyTorch's default."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---- official checkpoint mapping --------------------------------------------------------------------

# official: patch_embed.conv_down.*, levels.i.blocks.*, levels.i.downsample.reduction.0 (end of level i),
# norm.*, head.*
_RULES = [
    (r"^patch_embed\.conv_down\.", "stem.conv."),
    (r"^levels\.(\d+)\.downsample\.reduction\.0\.", lambda m: f"stages.{int(m.group(1)) + 1}.downsample."),
    (r"^levels\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    (r"^head\.", "head.fc."),
]


def checkpoint_filter_fn(state_dict: Dict, model: MambaVision) -> Dict[str, torch.Tensor]:
    """Map an official MambaVision checkpoint (the released ``.pth.tar``: ``{'state_dict': sd, ...}``; also
    ``{'model': sd}``, DDP ``module.`` prefixes, a bare ``sd``) onto ``model``. A state dict already in vssm layout
    passes through the same check. Raises :class:`vssm.CheckpointMismatchError` naming missing / unexpected /
    mis-shaped keys (the classifier is exempt, timm adapts it; so is the stem's input-channel dim)."""
    sd = unwrap_state_dict(state_dict)
    if not any(k.startswith("stem.") for k in sd):
        renamed = {}
        for k, v in sd.items():
            for pattern, repl in _RULES:
                k = re.sub(pattern, repl, k)
            renamed[k] = v
        sd = renamed
    return match_state_dict(sd, model, input_conv="stem.conv.0")


# ---- configs and factories ----------------------------------------------------------------------------

def _cfg(hf_hub_id: str = "", hf_hub_filename: str = "", **kwargs) -> Dict:
    hub = dict(hf_hub_id=hf_hub_id, hf_hub_filename=hf_hub_filename) if hf_hub_id else {}
    return imagenet_cfg(**{
        "first_conv": "stem.conv.0", "crop_mode": "center", "license": "cc-by-nc-sa-4.0",
        "paper_ids": "arXiv:2407.08083", "paper_name": "MambaVision: A Hybrid Mamba-Transformer Vision Backbone",
        "origin_url": "https://github.com/NVlabs/MambaVision", **hub, **kwargs})


_NC = "weights CC-BY-NC-SA-4.0 (non-commercial), official code NVIDIA Source Code License-NC"

# The official Hugging Face files (hf_hub_id / hf_hub_filename; crop_pct as the official cfgs). With
# pretrained=True timm fetches them from the hub; pretrained_cfg_overlay=dict(file=PATH) loads a local copy.
default_cfgs = generate_default_cfgs({
    "mambavision_tiny.in1k": _cfg("nvidia/MambaVision-T-1K", "mambavision_tiny_1k.pth.tar", crop_pct=1.0,
                                  notes=(f"official MambaVision-T, top-1 82.3; {_NC}",)),
    "mambavision_tiny2.in1k": _cfg("nvidia/MambaVision-T2-1K", "mambavision_tiny2_1k.pth.tar", crop_pct=0.98,
                                   notes=(f"official MambaVision-T2, top-1 82.7; {_NC}",)),
    "mambavision_small.in1k": _cfg("nvidia/MambaVision-S-1K", "mambavision_small_1k.pth.tar", crop_pct=0.93,
                                   notes=(f"official MambaVision-S, top-1 83.3; {_NC}",)),
    "mambavision_base.in1k": _cfg("nvidia/MambaVision-B-1K", "mambavision_base_1k.pth.tar", crop_pct=1.0,
                                  notes=(f"official MambaVision-B, top-1 84.2; {_NC}",)),
    "mambavision_base.in21k_ft_in1k": _cfg("nvidia/MambaVision-B-21K", "mambavision_base_21k.pth.tar", crop_pct=1.0,
                                           notes=(f"official MambaVision-B-21K (IN-21k pretrained), top-1 84.9; "
                                                  f"{_NC}",)),
    "mambavision_large.in1k": _cfg("nvidia/MambaVision-L-1K", "mambavision_large_1k.pth.tar", crop_pct=1.0,
                                   notes=(f"official MambaVision-L, top-1 85.0; {_NC}",)),
    "mambavision_large.in21k_ft_in1k": _cfg("nvidia/MambaVision-L-21K", "mambavision_large_21k.pth.tar",
                                            crop_pct=1.0,
                                            notes=(f"official MambaVision-L-21K (IN-21k pretrained), top-1 86.1; "
                                                   f"{_NC}",)),
    "mambavision_large2.in1k": _cfg("nvidia/MambaVision-L2-1K", "mambavision_large2_1k.pth.tar", crop_pct=1.0,
                                    notes=(f"official MambaVision-L2, top-1 85.3; {_NC}",)),
})


def _model(variant: str, pretrained: bool, kwargs: Dict, **args) -> MambaVision:
    """The variant's ``args``, overridden by the caller's ``kwargs``."""
    return build_family_model(MambaVision, variant, pretrained, **dict(args, **kwargs))


_LS = dict(layer_scale=1e-5)  # B, L, L2: layer scale in the mixer stages
_HEADS_L = dict(num_heads=(4, 8, 16, 32))


@register_model
def mambavision_tiny(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-T (official mamba_vision_T): dim 80, depths 1-3-8-4; 31.8M params, 4.4G FLOPs, 82.3 top-1."""
    return _model("mambavision_tiny", pretrained, kwargs, dim=80, in_dim=32, depths=(1, 3, 8, 4))


@register_model
def mambavision_tiny2(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-T2 (official mamba_vision_T2): dim 80, depths 1-3-11-4; 35.1M params, 5.1G FLOPs, 82.7 top-1."""
    return _model("mambavision_tiny2", pretrained, kwargs, dim=80, in_dim=32, depths=(1, 3, 11, 4))


@register_model
def mambavision_small(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-S (official mamba_vision_S): dim 96, depths 3-3-7-5; 50.1M params, 7.5G FLOPs, 83.3 top-1."""
    return _model("mambavision_small", pretrained, kwargs, dim=96, in_dim=64, depths=(3, 3, 7, 5))


@register_model
def mambavision_base(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-B (official mamba_vision_B): dim 128, depths 3-3-10-5; 97.7M params, 15.0G FLOPs, 84.2 top-1."""
    return _model("mambavision_base", pretrained, kwargs, dim=128, in_dim=64, depths=(3, 3, 10, 5), **_LS)


@register_model
def mambavision_large(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-L (official mamba_vision_L): dim 196, depths 3-3-10-5; 227.9M params, 34.9G FLOPs, 85.0 top-1."""
    return _model("mambavision_large", pretrained, kwargs, dim=196, in_dim=64, depths=(3, 3, 10, 5), **_LS,
                  **_HEADS_L)


@register_model
def mambavision_large2(pretrained: bool = False, **kwargs) -> MambaVision:
    """MambaVision-L2 (official mamba_vision_L2): dim 196, depths 3-3-12-5; 241.5M params, 37.5G FLOPs, 85.3 top-1."""
    return _model("mambavision_large2", pretrained, kwargs, dim=196, in_dim=64, depths=(3, 3, 12, 5), **_LS,
                  **_HEADS_L)
