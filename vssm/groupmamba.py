"""GroupMamba: parameter-efficient group visual state-space model, as a timm model family.

Paper: "GroupMamba: Parameter-Efficient and Accurate Group Visual State Space Model" (Shaker et al., 2024),
https://arxiv.org/abs/2407.13772. Official code and weights: https://github.com/Amshaker/GroupMamba (MIT).
This is an independent implementation; ``checkpoint_filter_fn`` maps the official release checkpoints onto
it, giving the official logits (float32, max abs difference < 1e-4).

Architecture (as released):
  * stem: 7x7/s2 conv + BN + ReLU, two 3x3 conv + BN + ReLU, 3x3/s2 conv + LayerNorm (stride 4);
    3x3/s2 conv + LayerNorm downsampling between stages.
  * block: ``x + drop_path(mixer(x))`` then ``x + drop_path(ffn(norm2(x)))``; the mixer carries its own norm.
    FFN: fc -> depthwise 3x3 conv -> GELU -> fc.
  * mixer (modulated group Mamba layer): LayerNorm, channel-affinity modulation (CAM: mean over tokens -> fc
    -> ReLU -> fc -> sigmoid), the channels split in four groups, each group scanned by its own
    single-direction SSM block (VSSS: gated, depthwise conv, d_state 1) in one of four directions (the
    ``group`` pattern of :mod:`vssm.scans`; one grouped selective-scan call for the four groups), the result
    multiplied by ``skip_scale * x`` and by the CAM weights, LayerNorm again (same weights), projection.
  * head: the stage-4 tokens are averaged into a class token, which one class block (the same mixer on a 1x1
    map, plus an MLP) refines; final LayerNorm; a classifier and a distillation classifier read it.
    Both modes return their average unless distilled training is switched on (``set_distilled_training(True)``,
    as timm's DeiT; vssm's distillation recipe does it): training mode then returns ``(logits, dist_logits)``.
    See :mod:`vssm.engine.distill` for the official distillation loss.

Layout: channels-last ``(B, H, W, C)`` inside; ``forward_features`` returns the stage-4 tokens (not normed,
as in the official trunk); ``forward_intermediates`` / ``features_only`` give NCHW maps at strides 4/8/16/32
(stages 1-3 include their stage norm, which the official trunk applies before the next downsample).
Any input size works (every stride-2 conv pads: a side of n pixels gives ceil(n / 32) tokens at stride 32).
"""
from __future__ import annotations

import math
import re
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, trunc_normal_
from timm.models import generate_default_cfgs, register_model

from ._backbone import Stage, StagedBackbone, build_family_model, imagenet_cfg, stage_dims
from ._checkpoint import match_state_dict, unwrap_state_dict
from .layers import SS2D, ConvDownsample, DropPath, Mlp

__all__ = ["GroupMamba", "GroupMambaBlock", "GroupMambaMixer", "GroupedSS2D",
           "DistilledClassifier", "checkpoint_filter_fn"]

NUM_GROUPS = 4


# ------------------------------------------------------------------------------------------------------
# grouped pieces of the four VSSS blocks
# ------------------------------------------------------------------------------------------------------

class GroupedLinear(nn.Module):
    """``groups`` independent bias-free linear maps on contiguous channel chunks (a block-diagonal linear).

    ``weight`` is ``(groups * out_per_group, in_per_group)``: group g's matrix is rows
    ``g * out_per_group : (g + 1) * out_per_group`` (the layout of a grouped 1x1 convolution).
    ``split_out=n`` reorders the output as n chunks over all groups: with group outputs ``[a_g, b_g]``
    (``split_out=2``), the result is ``[a_0 .. a_{G-1}, b_0 .. b_{G-1}]``.
    """

    def __init__(self, groups: int, in_per_group: int, out_per_group: int, split_out: int = 1):
        super().__init__()
        if out_per_group % split_out:
            raise ValueError(f"out_per_group {out_per_group} is not divisible by split_out {split_out}")
        self.groups, self.in_per_group, self.out_per_group = groups, in_per_group, out_per_group
        self.split_out = split_out
        self.weight = nn.Parameter(torch.empty(groups * out_per_group, in_per_group))
        trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        G, S = self.groups, self.split_out
        y = torch.einsum("...gi,goi->...go", x.reshape(*lead, G, self.in_per_group),
                         self.weight.view(G, self.out_per_group, self.in_per_group))
        if S > 1:  # (..., G, S, o) -> (..., S, G, o)
            y = y.reshape(*lead, G, S, self.out_per_group // S).transpose(-3, -2)
        return y.reshape(*lead, G * self.out_per_group)

    def extra_repr(self) -> str:
        return (f"groups={self.groups}, in_per_group={self.in_per_group}, out_per_group={self.out_per_group}, "
                f"split_out={self.split_out}")


class GroupedLayerNorm(nn.Module):
    """LayerNorm over each of ``groups`` contiguous channel chunks separately (own affine per chunk)."""

    def __init__(self, groups: int, channels_per_group: int, eps: float = 1e-5):
        super().__init__()
        self.groups, self.channels_per_group, self.eps = groups, channels_per_group, eps
        self.weight = nn.Parameter(torch.ones(groups * channels_per_group))
        self.bias = nn.Parameter(torch.zeros(groups * channels_per_group))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        G, c = self.groups, self.channels_per_group
        x = F.layer_norm(x.reshape(*shape[:-1], G, c), (c,), eps=self.eps)
        return (x * self.weight.view(G, c) + self.bias.view(G, c)).reshape(shape)

    def extra_repr(self) -> str:
        return f"groups={self.groups}, channels_per_group={self.channels_per_group}, eps={self.eps}"


class GroupedSS2D(SS2D):
    """The four VSSS blocks of a GroupMamba layer as one grouped :class:`vssm.layers.SS2D`.

    Channel group g (``dim / 4`` contiguous channels) has its own in-projection (to x and z), depthwise
    conv, SSM parameters, output norm and out-projection, and is scanned in direction g of the ``group``
    pattern (row-major, column-major, and both reversed). The in/out projections (:class:`GroupedLinear`, the
    in-projection emitting ``[x of all groups, z of all groups]``) and the output norm (:class:`GroupedLayerNorm`),
    built through SS2D's ``linear_layer`` / ``norm_layer`` factories, are per group (block-diagonal); the
    depthwise conv is per channel anyway; the per-sequence SSM parameters of the shared SS2D
    (``x_proj_weight[g]``, ``dt_projs_*[g]``, ``A_logs``/``Ds`` rows of group g) are exactly the per-group ones.
    The four scans run as ONE grouped :func:`vssm.kernels.selective_scan` call.
    """

    def __init__(self, dim: int, groups: int = NUM_GROUPS, d_state: int = 1, ssm_ratio: float = 1.0,
                 dt_rank: Union[int, str] = "auto", d_conv: int = 3, scan: str = "group",
                 backend: str = "auto", **kwargs):
        if dim % groups:
            raise ValueError(f"GroupedSS2D: dim {dim} is not divisible by {groups} groups")
        c = dim // groups
        c_inner = int(ssm_ratio * c)
        if int(ssm_ratio * dim) != groups * c_inner:
            raise ValueError(f"GroupedSS2D: ssm_ratio {ssm_ratio} gives {int(ssm_ratio * dim)} inner channels, not "
                             f"{groups} x {c_inner}")
        if dt_rank == "auto":
            dt_rank = math.ceil(c / 16)  # official: per VSSS block of c channels
        super().__init__(dim, scan=scan, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank,
                         d_conv=d_conv, conv_bias=True, gate=True, z_act=True, out_norm=True, bias=False,
                         backend=backend, norm_layer=lambda d: GroupedLayerNorm(groups, d // groups),
                         linear_layer=lambda i, o, chunks: GroupedLinear(groups, i // groups, o // groups, chunks),
                         **kwargs)
        if self.scan.K != groups or not self.scan.split_channels:
            raise ValueError(f"GroupedSS2D needs a channel-splitting scan pattern with K={groups}, got {self.scan}")
        self.groups = groups


class ChannelAffinity(nn.Module):
    """CAM weights: mean over all positions -> fc -> ReLU -> fc -> sigmoid, ``(B, H, W, C) -> (B, C)``."""

    def __init__(self, dim: int, out_dim: Optional[int] = None, reduction: int = 16):
        super().__init__()
        hidden = dim // reduction
        if hidden < 1:
            raise ValueError(f"ChannelAffinity: dim {dim} is smaller than the reduction {reduction}")
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc2(self.act(self.fc1(x.mean(dim=(1, 2))))))


@register_notrace_function
def half_to_float(x: torch.Tensor) -> torch.Tensor:
    """float16 -> float32 (the official mixer computes in float32 under fp16); other dtypes as they are."""
    return x.float() if x.dtype == torch.float16 else x


class GroupMambaMixer(nn.Module):
    """Modulated group Mamba layer on ``(B, H, W, C)``:
    ``proj(norm(ssm(norm(x)) * skip_scale * norm(x) * cam(norm(x))))`` with the four-group SSM."""

    def __init__(self, dim: int, d_state: int = 1, ssm_ratio: float = 1.0, d_conv: int = 3,
                 reduction: int = 16, scan_backend: str = "auto"):
        super().__init__()
        self.norm = nn.LayerNorm(dim)  # official: default eps, used twice
        self.cam = ChannelAffinity(dim, reduction=reduction)
        self.ssm = GroupedSS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, d_conv=d_conv, backend=scan_backend)
        self.skip_scale = nn.Parameter(torch.ones(1))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(half_to_float(x))
        gate = self.cam(x)
        y = self.ssm(x) * self.skip_scale * x
        y = y * gate[:, None, None, :]
        return self.proj(self.norm(y))


class ConvFFN(nn.Module):
    """fc -> depthwise 3x3 conv -> GELU -> fc on ``(B, H, W, C)`` (PVTv2-style FFN of the official blocks)."""

    def __init__(self, dim: int, hidden: int, act_layer=nn.GELU, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = self.drop(self.act(x))
        return self.drop(self.fc2(x))


class GroupMambaBlock(nn.Module):
    """``x + drop_path(mixer(x))``, ``x + drop_path(mlp(norm2(x)))`` (the mixer normalises its own input)."""

    def __init__(self, dim: int, mlp_ratio: float, drop_path: float = 0.0, norm_layer=nn.LayerNorm,
                 proj_drop: float = 0.0, **mixer_kwargs):
        super().__init__()
        self.mixer = GroupMambaMixer(dim, **mixer_kwargs)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = ConvFFN(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.mixer(x))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class ClassBlock(nn.Module):
    """The official post network: the group-Mamba mixer and an MLP on the class token (a 1x1 map),
    ``c + norm1(mixer(c))``, ``c + mlp(norm2(c))``; ``(B, C) -> (B, C)``."""

    def __init__(self, dim: int, mlp_ratio: float, norm_layer=nn.LayerNorm, **mixer_kwargs):
        super().__init__()
        self.mixer = GroupMambaMixer(dim, **mixer_kwargs)
        self.norm1 = norm_layer(dim)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.norm1(self.mixer(x[:, None, None, :]))[:, 0, 0]
        return x + self.mlp(self.norm2(x))


class DistilledClassifier(nn.Module):
    """Classifier + distillation classifier on the same feature: their average, or ``(logits, dist_logits)`` in
    training mode with ``distilled_training`` (off by default, as timm's DeiT). Without distillation: a plain
    classifier."""

    def __init__(self, in_features: int, num_classes: int, distillation: bool = True, drop_rate: float = 0.0):
        super().__init__()
        self.in_features = in_features
        self.distillation = distillation
        self.distilled_training = False
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.reset(num_classes)

    def reset(self, num_classes: int) -> None:
        device = self.fc.weight.device if isinstance(getattr(self, "fc", None), nn.Linear) else None

        def linear():
            if num_classes <= 0:
                return nn.Identity()
            fc = nn.Linear(self.in_features, num_classes, device=device)
            trunc_normal_(fc.weight, std=0.02)
            nn.init.zeros_(fc.bias)
            return fc

        self.num_classes = num_classes
        self.fc = linear()
        self.fc_dist = linear() if self.distillation else None

    def forward(self, x: torch.Tensor, pre_logits: bool = False):
        x = self.drop(x)
        if pre_logits:
            return x
        if self.fc_dist is None:
            return self.fc(x)
        out, out_dist = self.fc(x), self.fc_dist(x)
        if self.training and self.distilled_training and not torch.jit.is_scripting():
            return out, out_dist
        return (out + out_dist) / 2


# ------------------------------------------------------------------------------------------------------
# stem, stage, model
# ------------------------------------------------------------------------------------------------------

class GroupMambaStem(nn.Module):
    """7x7/s2 conv-BN-ReLU, 2 x (3x3 conv-BN-ReLU), 3x3/s2 conv (bias), LayerNorm; image -> (B, H/4, W/4, C)."""

    def __init__(self, in_chans: int, hidden: int, out_dim: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, hidden, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
        )
        self.proj = nn.Conv2d(hidden, out_dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.conv(x)).permute(0, 2, 3, 1))


class GroupMamba(StagedBackbone):
    """GroupMamba backbone + class-token block + (distilled) classifier.

    Args:
        in_chans: input image channels.  num_classes: classifier outputs (0: no classifier).
        global_pool: 'avg' (the class token is the mean of the stage-4 tokens) or '' (no pooling, no class block:
            the classifiers read every normed token).
        stem_hidden_dim: channels of the stem's convs.  dims: channels per stage.  depths: blocks per stage.
        mlp_ratios: FFN ratio per stage (the class block uses the last).
        d_state, ssm_ratio, ssm_conv: VSSS options (official 1, 1.0, 3).  cam_reduction: CAM reduction (16).
        distillation: add the distillation classifier (official: True). The model returns the average of the
            two classifiers; after ``set_distilled_training(True)`` training mode returns ``(logits, dist_logits)``.
        drop_rate: dropout before the classifiers (official: none).  proj_drop_rate: FFN dropout (official: none).
        drop_path_rate: stochastic depth, linear over the trunk blocks.  norm_eps: eps of the block / stage /
            class-block norms (official 1e-6; the stem, downsample and mixer norms keep 1e-5 as released).
        scan_backend: selective-scan backend.  min_input_size: smallest accepted H / W (official code takes any).
        img_size: accepted for API uniformity and ignored (no position embedding).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            stem_hidden_dim: int = 32,
            dims: Sequence[int] = (64, 128, 348, 448),
            depths: Sequence[int] = (3, 4, 9, 3),
            mlp_ratios: Union[float, Sequence[float]] = (8, 8, 4, 4),
            d_state: int = 1,
            ssm_ratio: float = 1.0,
            ssm_conv: int = 3,
            cam_reduction: int = 16,
            distillation: bool = True,
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            norm_eps: float = 1e-6,
            scan_backend: str = "auto",
            min_input_size: int = 1,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
    ):
        super().__init__(in_chans, num_classes, min_input_size)
        num_stages = len(depths)
        dims = stage_dims(dims, num_stages)
        mlp_ratios = [mlp_ratios] * num_stages if isinstance(mlp_ratios, (int, float)) else list(mlp_ratios)
        if len(mlp_ratios) != num_stages:
            raise ValueError(f"depths {list(depths)} and mlp_ratios {mlp_ratios} must have the same length")
        bad = [d for d in dims if d % NUM_GROUPS]
        if bad:
            raise ValueError(f"GroupMamba splits channels in {NUM_GROUPS} groups: dims {bad} are not divisible by "
                             f"{NUM_GROUPS}")
        self.global_pool = _check_pool(global_pool)
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        mixer_kwargs = dict(d_state=d_state, ssm_ratio=ssm_ratio, d_conv=ssm_conv, reduction=cam_reduction,
                            scan_backend=scan_backend)
        self.stem = GroupMambaStem(in_chans, stem_hidden_dim, dims[0])

        def make_stage(i: int, in_dim: int, dim: int, drop_path: List[float]) -> Stage:
            blocks = [GroupMambaBlock(dim, mlp_ratios[i], drop_path=dp, norm_layer=norm_layer,
                                      proj_drop=proj_drop_rate, **mixer_kwargs) for dp in drop_path]
            return Stage(blocks, downsample=ConvDownsample(in_dim, dim, kernel_size=3) if i > 0 else None,
                         norm=norm_layer(dim) if i < num_stages - 1 else None)

        self.build_stages(make_stage, dims, depths, drop_path_rate)
        self.cls_block = ClassBlock(dims[-1], mlp_ratios[-1], norm_layer=norm_layer, **mixer_kwargs)
        self.norm = norm_layer(dims[-1])
        self.head = DistilledClassifier(dims[-1], num_classes, distillation=distillation, drop_rate=drop_rate)
        self.apply(_init_weights)

    head_modules = ("norm", "head", "cls_block")

    def checkpoint_filter(self, state_dict: Dict) -> Dict[str, torch.Tensor]:
        return checkpoint_filter_fn(state_dict, self)

    # ---- timm API (the rest is StagedBackbone's) ----------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return super().no_weight_decay() | {n for n, _ in self.named_parameters() if n.endswith("skip_scale")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        matcher = super().group_matcher(coarse)
        if not coarse:  # stage norms close their stage; the class block goes with the final norm
            matcher["blocks"][-1:] = [(r"^stages\.(\d+)\.norm", (99998,)), (r"^cls_block|^norm", (99999,))]
        return matcher

    @torch.jit.ignore
    def set_distilled_training(self, enable: bool = True) -> None:
        """True: training-mode forward returns ``(logits, dist_logits)`` (distillation training, as timm's DeiT);
        False (default): the average of the two classifiers, in every mode."""
        self.head.distilled_training = enable

    @torch.jit.ignore
    def get_classifier(self) -> Union[nn.Module, Tuple[nn.Module, nn.Module]]:
        return self.head.fc if self.head.fc_dist is None else (self.head.fc, self.head.fc_dist)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            self.global_pool = _check_pool(global_pool)
        self.num_classes = num_classes
        self.head.reset(num_classes)

    def drop_head(self) -> None:
        self.cls_block = nn.Identity()
        self.head = DistilledClassifier(self.num_features, 0, distillation=False)

    def final_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stage-4 tokens ``(B, ceil(H/32), ceil(W/32), C_last)`` as they are: the final norm follows the class
        block in :meth:`forward_head`. (Stage outputs 1-3 include their stage norm, part of the official trunk.)"""
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False):
        """Stage-4 tokens -> class token (mean) -> class block -> norm -> classifier(s).
        ``pre_logits=True`` returns the normed class-token feature ``(B, C_last)``. With ``global_pool=''`` the
        tokens are not pooled (no class block): normed ``(B, h, w, C_last)``, the classifiers applied per token."""
        if self.global_pool == "avg":
            x = self.cls_block(x.mean(dim=(1, 2)))
        return self.head(self.norm(x), pre_logits=pre_logits)


def _check_pool(global_pool: Optional[str]) -> str:
    """'avg' (also for None): the class token is the mean of the stage-4 tokens; '': no pooling."""
    if global_pool not in ("avg", "", None):
        raise ValueError(f"GroupMamba pools the stage-4 tokens into its class token: global_pool must be 'avg' or '' "
                         f"(no pooling), got {global_pool!r}")
    return "" if global_pool == "" else "avg"


def _init_weights(module: nn.Module) -> None:
    """Official init: Linear trunc-normal(0.02) / zero bias; LayerNorm 1/0; Conv2d normal(0, sqrt(2/fan_out))
    with fan_out = k*k*out/groups, zero bias. The SSM parameters keep the init of :class:`SS2D`."""
    if isinstance(module, (nn.Linear, GroupedLinear)):
        trunc_normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, GroupedLayerNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ---- official checkpoint mapping --------------------------------------------------------------------

_GROUP_KEY = re.compile(r"^(.*)\.attn\.mamba_g([1-4])\.(.+)$")

# official -> ours, applied after the four mamba_g{k} groups are merged into `<prefix>.attn.mamba.<name>`
_RULES = [
    (r"^patch_embed1\.", "stem."),
    (r"^patch_embed([2-4])\.proj\.", lambda m: f"stages.{int(m.group(1)) - 1}.downsample.conv."),
    (r"^patch_embed([2-4])\.norm\.", lambda m: f"stages.{int(m.group(1)) - 1}.downsample.norm."),
    (r"^block([1-4])\.(\d+)\.", lambda m: f"stages.{int(m.group(1)) - 1}.blocks.{m.group(2)}."),
    (r"^norm([1-3])\.", lambda m: f"stages.{int(m.group(1)) - 1}.norm."),
    (r"^norm4\.", "norm."),
    (r"^post_network\.0\.", "cls_block."),
    (r"\.attn\.mamba\.", ".mixer.ssm."),
    (r"\.attn\.fc([12])\.", r".mixer.cam.fc\1."),
    (r"\.attn\.", ".mixer."),
    (r"\.mlp\.dwconv\.dwconv\.", ".mlp.dwconv."),
    (r"^head\.", "head.fc."),
    (r"^dist_head\.", "head.fc_dist."),
]


def _merge_groups(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Concatenate the four official ``attn.mamba_g{1..4}.<name>`` tensors along dim 0 into
    ``attn.mamba.<name>`` (group order 1..4 = scan directions 0..3 of the ``group`` pattern)."""
    out, groups = {}, {}
    for k, v in sd.items():
        m = _GROUP_KEY.match(k)
        if m:
            groups.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = v
        else:
            out[k] = v
    for (prefix, name), parts in groups.items():
        key = f"{prefix}.attn.mamba.{name}"
        if sorted(parts) != [1, 2, 3, 4]:
            # leave the incomplete set under its official names: the key check reports them
            out.update({f"{prefix}.attn.mamba_g{g}.{name}": t for g, t in parts.items()})
            continue
        shapes = {tuple(t.shape) for t in parts.values()}
        if len(shapes) != 1:
            raise ValueError(f"official groups of {prefix}.attn.mamba_g*.{name} differ in shape: {sorted(shapes)}")
        out[key] = torch.cat([parts[g] for g in (1, 2, 3, 4)], dim=0)
    return out


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: GroupMamba) -> Dict[str, torch.Tensor]:
    """Map an official GroupMamba checkpoint (the released bare state dict, or a training checkpoint
    ``{'model': sd, ...}``) onto ``model``. A state dict already in vssm layout passes through the same key
    check. Raises :class:`vssm.CheckpointMismatchError` naming missing / unexpected / mis-shaped keys
    (the classifiers ``head.fc`` / ``head.fc_dist`` are exempt: timm adapts them to ``num_classes``; so is the
    input-channel dim of the first stem conv, which timm adapts to ``in_chans``)."""
    sd = unwrap_state_dict(state_dict)
    if any(k.startswith("stem.") for k in sd):  # already ours
        return match_state_dict(sd, model, classifier="head", input_conv="stem.conv.0")
    sd = _merge_groups(sd)
    renamed = {}
    for k, v in sd.items():
        for pattern, repl in _RULES:
            k = re.sub(pattern, repl, k)
        renamed[k] = v
    if getattr(model.head, "fc_dist", None) is None:  # a model built with distillation=False
        renamed = {k: v for k, v in renamed.items() if not k.startswith("head.fc_dist.")}
    return match_state_dict(renamed, model, classifier="head", input_conv="stem.conv.0")


# ---- configs and factories ----------------------------------------------------------------------------

def _cfg(**kwargs) -> Dict:
    return imagenet_cfg(
        first_conv="stem.conv.0", classifier=("head.fc", "head.fc_dist"), license="mit", paper_ids="arXiv:2407.13772",
        paper_name="GroupMamba: Parameter-Efficient and Accurate Group Visual State Space Model",
        origin_url="https://github.com/Amshaker/GroupMamba", **kwargs)


# Official checkpoints are NOT downloaded (url is empty): fetch the file from the official README's links
# (Google Drive / the Hugging Face repo in hf_hub_id) and load it with pretrained=True,
# pretrained_cfg_overlay=dict(file=PATH). The released file is a bare state dict (EMA weights).
default_cfgs = generate_default_cfgs({
    "groupmamba_tiny.in1k": _cfg(
        hf_hub_id="Abdelrahman-shaker/GroupMamba-Tiny",
        notes=("official GroupMamba-T (Google Drive id 1TrYYs0uGZbja_2ONQLyfiNdp8C5ZYP1o), top-1 83.3, 4.5G FLOPs",),
    ),
    "groupmamba_small.in1k": _cfg(
        hf_hub_id="Abdelrahman-shaker/GroupMamba-Small",
        notes=("official GroupMamba-S (Google Drive id 1vTN9ynDcsDuOVrcT9GcQ5nBSk-hXySlh), top-1 83.9, 7.0G FLOPs",),
    ),
    "groupmamba_base.in1k": _cfg(
        hf_hub_id="Abdelrahman-shaker/GroupMamba-Base",
        notes=("official GroupMamba-B (Google Drive id 1A_srBeDYpsinU5W3PAEADu1saoz413EU), top-1 84.5, 14G FLOPs",),
    ),
})


def _create_groupmamba(variant: str, pretrained: bool = False, **kwargs) -> GroupMamba:
    return build_family_model(GroupMamba, variant, pretrained, **kwargs)


@register_model
def groupmamba_tiny(pretrained: bool = False, **kwargs) -> GroupMamba:
    """GroupMamba-T: 23.4M params (with the distillation head), 4.5G FLOPs, 83.3 top-1."""
    args = dict(stem_hidden_dim=32, dims=(64, 128, 348, 448), depths=(3, 4, 9, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_groupmamba("groupmamba_tiny", pretrained, **dict(args, **kwargs))


@register_model
def groupmamba_small(pretrained: bool = False, **kwargs) -> GroupMamba:
    """GroupMamba-S: 34.8M params, 7.0G FLOPs, 83.9 top-1."""
    args = dict(stem_hidden_dim=64, dims=(64, 128, 348, 512), depths=(3, 4, 16, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_groupmamba("groupmamba_small", pretrained, **dict(args, **kwargs))


@register_model
def groupmamba_base(pretrained: bool = False, **kwargs) -> GroupMamba:
    """GroupMamba-B: 57.2M params, 14G FLOPs, 84.5 top-1."""
    args = dict(stem_hidden_dim=64, dims=(96, 192, 424, 512), depths=(3, 6, 21, 3), mlp_ratios=(8, 8, 4, 4))
    return _create_groupmamba("groupmamba_base", pretrained, **dict(args, **kwargs))
