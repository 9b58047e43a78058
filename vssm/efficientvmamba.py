"""EfficientVMamba: atrous selective scan for light-weight visual Mamba, as a timm model family.

Paper: "EfficientVMamba: Atrous Selective Scan for Light Weight Visual Mamba" (Pei, Huang, Xu, 2024),
https://arxiv.org/abs/2403.09977. Official code and weights: https://github.com/TerryPei/EfficientVMamba
(Apache-2.0). This is an independent implementation; ``checkpoint_filter_fn`` maps the official checkpoints
onto it, giving the official logits (float32, max abs difference < 1e-4).

Architecture:
  * stem: 4x4/s4 patch conv + LayerNorm; downsample: patch merging (2x2 concat, LayerNorm, Linear).
  * stages 0-1: EVSS blocks. A pre-norm residual block with two branches on the normed input: the SS2D
    mixer with the atrous ("ES2D", skip-sampled, ``vssm.scans.build('atrous', step=2)``) scan, and a local
    branch (3x3 depthwise conv, BatchNorm, GELU, 1x1 conv). One channel gate (LayerNorm, mean over space,
    Linear, GELU, Linear, sigmoid; shared weights) rescales each branch and the two are summed.
  * stages 2-3: MobileNetV2 inverted residual blocks (expand 4, ReLU, squeeze-excitation 1/8 of the
    expanded width), no SSM.
  * head: LayerNorm, global average pool, Linear.

Variants (ImageNet-1k, 224x224):
  * ``efficient_vmamba_tiny``: dims 48, depths 2-2-4-2, 6.49M params, 0.79G FLOPs, 76.5 top-1.
  * ``efficient_vmamba_small``: dims 64, depths 2-2-4-2, 11.27M params, 1.32G FLOPs, 78.7 top-1. This is
    the model of the paper (11M / 1.3G) and of the official training log (``log_efficient_vmamba_small``,
    11.274M params, patch embed 3->64); the repository's ``vssm_efficient_small.yaml`` says dims 96.
  * ``efficient_vmamba_small_d96``: the repository yaml's small model (dims 96, depths 2-2-4-2, 24.76M
    params, 2.78G FLOPs); no published result belongs to it.
  * ``efficient_vmamba_base``: dims 96, depths 2-2-9-2, 33.72M params, 3.95G FLOPs, 81.8 top-1.

The model is a :class:`vssm._backbone.StagedBackbone` (the timm API of every staged family:
``forward_intermediates``, ``features_only``, ``prune_intermediate_layers``, grad checkpointing, ...). Tokens are
channels-last ``(B, H, W, C)``; the convolutional stages convert to ``NCHW`` internally.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import SEModule
from timm.models import generate_default_cfgs, register_model

from ._backbone import Stage, StagedBackbone, build_family_model, hf_release, imagenet_cfg, stage_dims
from ._checkpoint import match_state_dict, unwrap_state_dict
from .layers import SS2D, DropPath, PatchEmbedNHWC, build_downsample, init_vssm_weights

__all__ = ["EfficientVMamba", "EVSSBlock", "InvertedResidual", "checkpoint_filter_fn"]


class ChannelGate(nn.Module):
    """Global channel gate of the EVSS block: ``x * sigmoid(fc2(act(fc1(mean_hw(norm(x))))))`` on
    ``(B, H, W, C)``. The norm is applied per token before the spatial mean."""

    def __init__(self, dim: int, rd_ratio: float = 0.125, norm_layer=nn.LayerNorm, act_layer=nn.GELU):
        super().__init__()
        rd = int(dim * rd_ratio)
        self.norm = norm_layer(dim)
        self.fc1 = nn.Linear(dim, rd)
        self.act = act_layer()
        self.fc2 = nn.Linear(rd, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.norm(x).mean((1, 2), keepdim=True)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(g))))


class LocalConvBranch(nn.Module):
    """3x3 depthwise conv (bias) -> BatchNorm -> GELU -> 1x1 conv (bias); ``(B, H, W, C)`` in and out."""

    def __init__(self, dim: int, act_layer=nn.GELU):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.bn = nn.BatchNorm2d(dim)
        self.act = act_layer()
        self.conv_pw = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)
        x = self.conv_pw(self.act(self.bn(self.conv_dw(x))))
        return x.permute(0, 2, 3, 1)


class EVSSBlock(nn.Module):
    """Efficient visual state-space block on ``(B, H, W, C)``:
    ``x + drop_path(gate(ss2d(n)) + gate(conv(n)))`` with ``n = norm1(x)`` and ONE gate module for both branches.
    ``mixer_kwargs`` go to :class:`vssm.layers.SS2D` (scan pattern, d_state, ssm_ratio, ...)."""

    def __init__(self, dim: int, drop_path: float = 0.0, norm_layer=nn.LayerNorm, gate_ratio: float = 0.125,
                 **mixer_kwargs):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.mixer = SS2D(dim, norm_layer=norm_layer, **mixer_kwargs)
        self.conv_branch = LocalConvBranch(dim)
        self.gate = ChannelGate(dim, gate_ratio, norm_layer=norm_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm1(x)
        return x + self.drop_path(self.gate(self.mixer(n)) + self.gate(self.conv_branch(n)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block on ``(B, C, H, W)``: 1x1 expand -> BN -> ReLU -> 3x3 depthwise -> BN -> ReLU ->
    squeeze-excitation (``max(1, int(mid * se_ratio))`` channels) -> 1x1 project -> BN, plus the residual."""

    def __init__(self, dim: int, expand_ratio: float = 4.0, se_ratio: float = 0.125, drop_path: float = 0.0,
                 act_layer=nn.ReLU):
        super().__init__()
        mid = int(dim * expand_ratio)
        self.conv_pw = nn.Conv2d(dim, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv_dw = nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.act = act_layer()
        self.se = SEModule(mid, rd_channels=max(1, int(mid * se_ratio)), act_layer=act_layer)
        self.conv_pwl = nn.Conv2d(mid, dim, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv_pw(x)))
        y = self.act(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(self.se(y)))
        return x + self.drop_path(y)


class EfficientVMamba(StagedBackbone):
    """EfficientVMamba backbone + classifier.

    Args:
        in_chans: input image channels.  num_classes: classifier outputs (0: no classifier).
        global_pool: head pooling type.  depths: blocks per stage.
        dims: channels per stage, or an int ``d`` for ``(d, 2d, 4d, 8d)``.
        stage_blocks: block type per stage, 'evss' or 'ir' (official: evss, evss, ir, ir).
        patch_size: stem reduction (4).  downsample: 'merge' (official v1) / 'conv2' / 'conv3'.
        scan: scan pattern name from :mod:`vssm.scans`, ``scan_options`` its options ('atrous', step 2).
        d_state, ssm_ratio, dt_rank, ssm_conv, ssm_conv_bias: SS2D options (gated SS2D with SiLU on z).
        scan_backend: selective-scan backend.  gate_ratio: EVSS channel-gate reduction.
        ir_expand, ir_se_ratio: inverted-residual expansion and squeeze-excitation ratio.
        drop_rate: classifier dropout.  drop_path_rate: stochastic depth, linear over all blocks.
        norm_eps: LayerNorm epsilon (official 1e-5).  min_input_size: smallest accepted H / W.
        img_size: accepted for API uniformity and ignored (no position embedding).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            depths: Sequence[int] = (2, 2, 4, 2),
            dims: Union[int, Sequence[int]] = 48,
            stage_blocks: Sequence[str] = ("evss", "evss", "ir", "ir"),
            patch_size: int = 4,
            downsample: str = "merge",
            scan: str = "atrous",
            scan_options: Optional[dict] = None,
            d_state: int = 16,
            ssm_ratio: float = 2.0,
            dt_rank: Union[int, str] = "auto",
            ssm_conv: int = 3,
            ssm_conv_bias: bool = True,
            scan_backend: str = "auto",
            gate_ratio: float = 0.125,
            ir_expand: float = 4.0,
            ir_se_ratio: float = 0.125,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            norm_eps: float = 1e-5,
            min_input_size: int = 32,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
    ):
        super().__init__(in_chans, num_classes, min_input_size)
        dims = stage_dims(dims, len(depths))
        if len(stage_blocks) != len(depths):
            raise ValueError(f"stage_blocks {list(stage_blocks)} and depths {list(depths)} must have the same length")
        bad = [b for b in stage_blocks if b not in ("evss", "ir")]
        if bad:
            raise ValueError(f"block must be 'evss' or 'ir', got {bad[0]!r}")
        if scan_options is None:
            scan_options = dict(step=2) if scan == "atrous" else {}
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        self.stem = PatchEmbedNHWC(in_chans, dims[0], patch_size=patch_size, norm_layer=norm_layer)
        mixer_kwargs = dict(
            scan=scan, scan_options=scan_options, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank,
            d_conv=ssm_conv, conv_bias=ssm_conv_bias, gate=True, z_act=True, backend=scan_backend,
        )

        def make_stage(i: int, in_dim: int, dim: int, drop_path: List[float]) -> Stage:
            if stage_blocks[i] == "evss":
                blocks = [EVSSBlock(dim, dp, norm_layer=norm_layer, gate_ratio=gate_ratio, **mixer_kwargs)
                          for dp in drop_path]
            else:
                blocks = [InvertedResidual(dim, ir_expand, ir_se_ratio, dp) for dp in drop_path]
            return Stage(blocks, downsample=build_downsample(downsample, in_dim, dim, norm_layer) if i > 0 else None,
                         channels_first=stage_blocks[i] == "ir")

        self.build_stages(make_stage, dims, depths, drop_path_rate, stem_reduction=patch_size)
        self.add_head(norm_layer(self.num_features), global_pool, drop_rate)
        self.apply(init_vssm_weights)

    def checkpoint_filter(self, state_dict: Dict) -> Dict[str, torch.Tensor]:
        return checkpoint_filter_fn(state_dict, self)


# ---- official checkpoint mapping --------------------------------------------------------------------
#
# Official EfficientVSSM layout: patch_embed.{0 conv, 2 norm}; layers.{0,1}.blocks.j.{norm, op.*,
# conv_branch.{0 dw conv, 1 bn, 3 pw conv}, se.{norm, global_reduce, channel_select}}; layers.{0,1}.downsample
# (end of the stage); layers.{2,3} = Sequential(permute, InvertedResidual x depth, permute, downsample) so
# block j is layers.i.{j+1} and the downsample is layers.i.{depth+2}; classifier.{norm, head}.

_EVSS_RULES = [
    (r"^patch_embed\.0\.", "stem.proj."),
    (r"^patch_embed\.2\.", "stem.norm."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.norm\.", r"stages.\1.blocks.\2.norm1."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.op\.", r"stages.\1.blocks.\2.mixer."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.conv_branch\.0\.", r"stages.\1.blocks.\2.conv_branch.conv_dw."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.conv_branch\.1\.", r"stages.\1.blocks.\2.conv_branch.bn."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.conv_branch\.3\.", r"stages.\1.blocks.\2.conv_branch.conv_pw."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.se\.norm\.", r"stages.\1.blocks.\2.gate.norm."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.se\.global_reduce\.", r"stages.\1.blocks.\2.gate.fc1."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.se\.channel_select\.", r"stages.\1.blocks.\2.gate.fc2."),
    (r"^classifier\.norm\.", "norm."),
    (r"^classifier\.head\.", "head.fc."),
]
# inside one inverted residual (official suffix -> ours)
_IR_RULES = [
    (r"^conv_pw\.0\.", "conv_pw."), (r"^conv_pw\.1\.", "bn1."),
    (r"^conv_dw\.0\.", "conv_dw."), (r"^conv_dw\.1\.", "bn2."),
    (r"^se\.conv_reduce\.", "se.fc1."), (r"^se\.conv_expand\.", "se.fc2."),
    (r"^conv_pw2\.0\.", "conv_pwl."), (r"^conv_pw2\.1\.", "bn3."),
]
def _official_to_ours(sd: Dict[str, torch.Tensor], depths: Sequence[int]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        m = re.match(r"^layers\.(\d+)\.downsample\.(.*)$", k)  # end of an EVSS stage -> start of the next
        if m:
            out[f"stages.{int(m.group(1)) + 1}.downsample.{m.group(2)}"] = v
            continue
        m = re.match(r"^layers\.(\d+)\.(\d+)\.(.*)$", k)  # conv stage: Sequential(permute, IR..., permute, ds)
        if m:
            i, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            depth = depths[i] if i < len(depths) else -1
            if 1 <= j <= depth:
                for pattern, repl in _IR_RULES:
                    rest = re.sub(pattern, repl, rest)
                out[f"stages.{i}.blocks.{j - 1}.{rest}"] = v
            elif j == depth + 2:
                out[f"stages.{i + 1}.downsample.{rest}"] = v
            else:
                out[k] = v  # left as is: reported as unexpected
            continue
        for pattern, repl in _EVSS_RULES:
            k = re.sub(pattern, repl, k)
        out[k] = v
    return out


def checkpoint_filter_fn(state_dict: Dict, model: EfficientVMamba) -> Dict[str, torch.Tensor]:
    """Map an official EfficientVMamba checkpoint (``{'model': sd}``, ``{'state_dict': sd}``, EMA / DDP
    prefixes, or a bare ``sd``) onto ``model``. A state dict already in vssm layout passes through the same
    check. Raises :class:`vssm.CheckpointMismatchError` naming missing / unexpected / mis-shaped keys."""
    sd = unwrap_state_dict(state_dict)
    if not any(k.startswith("stem.") for k in sd):
        sd = _official_to_ours(sd, [len(s.blocks) for s in model.stages])
    return match_state_dict(sd, model, input_conv="stem.proj")  # timm adapts it for in_chans != 3


# ---- configs and factories ----------------------------------------------------------------------------

_HF = "https://huggingface.co/TerryPei"
_LOGS = "https://github.com/TerryPei/EfficientVMamba/releases/download/v1.0.0"


def _cfg(**kwargs) -> Dict:
    return imagenet_cfg(first_conv="stem.proj", license="apache-2.0", paper_ids="arXiv:2403.09977",
                        paper_name="EfficientVMamba: Atrous Selective Scan for Light Weight Visual Mamba", **kwargs)


# Released models: pretrained=True fetches the official file from the Hugging Face hub (or finds it in the
# huggingface_hub cache). The hub repositories are the official README's; the file names are those this package
# has documented for them (efficient_vmamba_<size>.ckpt), not re-checked against the hub from an offline machine.
default_cfgs = generate_default_cfgs({
    "efficient_vmamba_tiny.in1k": _cfg(
        **hf_release("TerryPei/EfficientVMamba-Tiny", "efficient_vmamba_tiny.ckpt"),
        origin_url=f"{_HF}/EfficientVMamba-Tiny",
        notes=("official file efficient_vmamba_tiny.ckpt, top-1 76.5; "
               f"log {_LOGS}/log_efficient_vmamba_tiny.txt",),
    ),
    "efficient_vmamba_small.in1k": _cfg(
        **hf_release("TerryPei/EfficientVMamba-Small", "efficient_vmamba_small.ckpt"),
        origin_url=f"{_HF}/EfficientVMamba-Small",
        notes=("official file efficient_vmamba_small.ckpt, top-1 78.7; dims 64 as in the paper and "
               f"{_LOGS}/log_efficient_vmamba_small.txt (the repository yaml's dims-96 small is "
               "efficient_vmamba_small_d96)",),
    ),
    "efficient_vmamba_base.in1k": _cfg(
        **hf_release("TerryPei/EfficientVMamba-Base", "efficient_vmamba_base.ckpt"),
        origin_url=f"{_HF}/EfficientVMamba-Base",
        notes=("official file efficient_vmamba_base.ckpt, top-1 81.8; "
               f"log {_LOGS}/log_efficient_vmamba_base.txt",),
    ),
    "efficient_vmamba_small_d96": _cfg(
        notes=("the repository's classification/configs/vssm/vssm_efficient_small.yaml (dims 96); "
               "no published result or log belongs to this configuration",),
    ),
})


def _create(variant: str, pretrained: bool = False, **kwargs) -> EfficientVMamba:
    return build_family_model(EfficientVMamba, variant, pretrained, **kwargs)


@register_model
def efficient_vmamba_tiny(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-T: dims 48, depths 2-2-4-2; 6.49M params, 0.8G FLOPs, 76.5 top-1."""
    return _create("efficient_vmamba_tiny", pretrained, **dict(dict(dims=48, depths=(2, 2, 4, 2)), **kwargs))


@register_model
def efficient_vmamba_small(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-S (paper / training log): dims 64, depths 2-2-4-2; 11.27M params, 1.3G FLOPs, 78.7 top-1."""
    return _create("efficient_vmamba_small", pretrained, **dict(dict(dims=64, depths=(2, 2, 4, 2)), **kwargs))


@register_model
def efficient_vmamba_small_d96(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """The repository yaml's EfficientVMamba-S: dims 96, depths 2-2-4-2; 24.76M params, 2.8G FLOPs."""
    return _create("efficient_vmamba_small_d96", pretrained, **dict(dict(dims=96, depths=(2, 2, 4, 2)), **kwargs))


@register_model
def efficient_vmamba_base(pretrained: bool = False, **kwargs) -> EfficientVMamba:
    """EfficientVMamba-B: dims 96, depths 2-2-9-2; 33.72M params, 4.0G FLOPs, 81.8 top-1."""
    return _create("efficient_vmamba_base", pretrained, **dict(dict(dims=96, depths=(2, 2, 9, 2)), **kwargs))
