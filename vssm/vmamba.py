"""VMamba: Visual State Space Model, as a timm model family.

Paper: "VMamba: Visual State Space Model" (Liu et al., NeurIPS 2024), https://arxiv.org/abs/2401.10166
Official code and weights: https://github.com/MzeroMiko/VMamba (MIT). This is an independent
implementation; ``checkpoint_filter_fn`` maps the official release checkpoints onto it, giving the official
logits (float32, max abs difference < 1e-4).

Variants:
  * ``vmamba_tiny`` / ``vmamba_small`` / ``vmamba_base``: the v2 release (official ``vmamba_tiny_s1l8``,
    ``vmamba_small_s2l15``, ``vmamba_base_s2l15``): conv stem, 3x3/s2 conv downsample, SS2D without z gate
    (d_state 1), MLP in every block.
  * ``vmamba_tiny_s2l5``: the first v2 tiny release (official ``vmamba_tiny_s2l5``, ssm ratio 2, depths 2-2-5-2).
  * ``vanilla_vmamba_tiny`` / ``vanilla_vmamba_small`` / ``vanilla_vmamba_base``: the v0 releases: 4x4 patch stem,
    patch merging, gated SS2D (d_state 16), no MLP.
  * ``vmamba_nano``: a small v2-style model for CPU smoke runs (no official weights).

Layout: the model works on channels-last ``(B, H, W, C)`` tokens; ``forward_features`` returns them
(after the final norm); ``forward_intermediates`` / ``features_only`` return ``NCHW`` maps at strides
4, 8, 16, 32. Any input of at least 32x32 pixels is accepted (sizes not divisible by 32 round up stage by
stage exactly as the official code does).
"""
from __future__ import annotations

import re
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from ._backbone import Stage, StagedBackbone, build_family_model, imagenet_cfg, release_file, stage_dims
from ._checkpoint import match_state_dict, unwrap_state_dict
from .layers import SS2D, ConvStem, PatchEmbedNHWC, VSSBlock, build_downsample, init_vssm_weights

__all__ = ["VMamba", "checkpoint_filter_fn"]


class VMamba(StagedBackbone):
    """VMamba backbone + classifier.

    Args:
        in_chans: input image channels.  num_classes: classifier outputs (0: no classifier).
        global_pool: head pooling type ('avg', 'max', '' ...).
        depths: blocks per stage.  dims: channels per stage, or an int ``d`` for ``(d, 2d, 4d, 8d)``.
        patch_size: stem reduction (4).
        stem: 'conv' (v2: two 3x3/s2 convs) or 'patch' (v0: one 4x4/s4 conv).
        downsample: 'conv3' (v2), 'conv2' or 'merge' (v0 patch merging).
        d_state, ssm_ratio, dt_rank, ssm_conv, ssm_conv_bias, gate: SS2D options (see :class:`vssm.layers.SS2D`).
        scan: scan pattern name from :mod:`vssm.scans`.  scan_backend: selective-scan backend.
        mlp_ratio: MLP hidden ratio (0: no MLP branch).
        mixer_layer: the blocks' mixer (:class:`vssm.layers.SS2D` or a subclass).  block_mixer_kwargs: extra mixer
            options per block (``sum(depths)`` dicts, blocks in order over all stages), or None.
        drop_rate: classifier dropout.  proj_drop_rate: MLP / mixer output dropout.
        drop_path_rate: stochastic depth, linear over all blocks.
        norm_eps: LayerNorm epsilon (official: 1e-5).  min_input_size: smallest accepted H / W.
        img_size: accepted for API uniformity and ignored (no position embedding: any size works).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            depths: Sequence[int] = (2, 2, 9, 2),
            dims: Union[int, Sequence[int]] = 96,
            patch_size: int = 4,
            stem: str = "conv",
            downsample: str = "conv3",
            d_state: int = 1,
            ssm_ratio: float = 1.0,
            dt_rank: Union[int, str] = "auto",
            ssm_conv: int = 3,
            ssm_conv_bias: bool = False,
            gate: bool = False,
            scan: str = "cross",
            scan_backend: str = "auto",
            mlp_ratio: float = 4.0,
            mixer_layer: Type[SS2D] = SS2D,
            block_mixer_kwargs: Optional[Sequence[Dict]] = None,
            drop_rate: float = 0.0,
            proj_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            norm_eps: float = 1e-5,
            min_input_size: int = 32,
            img_size: Optional[Union[int, Tuple[int, int]]] = None,
    ):
        super().__init__(in_chans, num_classes, min_input_size)
        dims = stage_dims(dims, len(depths))
        per_block = [{}] * sum(depths) if block_mixer_kwargs is None else list(block_mixer_kwargs)
        if len(per_block) != sum(depths):
            raise ValueError(f"block_mixer_kwargs has {len(per_block)} entries for {sum(depths)} blocks")
        norm_layer = partial(nn.LayerNorm, eps=norm_eps)
        if stem == "conv":
            self.stem = ConvStem(in_chans, dims[0], patch_size=patch_size, norm_layer=norm_layer)
        elif stem == "patch":
            self.stem = PatchEmbedNHWC(in_chans, dims[0], patch_size=patch_size, norm_layer=norm_layer)
        else:
            raise ValueError(f"unknown stem {stem!r}; valid: 'conv' (v2), 'patch' (v0)")
        block_kwargs = dict(
            mlp_ratio=mlp_ratio, mlp_drop=proj_drop_rate, mixer_layer=mixer_layer, scan=scan, d_state=d_state,
            ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=ssm_conv, conv_bias=ssm_conv_bias, gate=gate,
            norm_layer=norm_layer, dropout=proj_drop_rate, backend=scan_backend,
        )

        def make_stage(i: int, in_dim: int, dim: int, drop_path: List[float]) -> Stage:
            first = sum(depths[:i])
            return Stage([VSSBlock(dim, drop_path=dp, **block_kwargs, **per_block[first + j])
                          for j, dp in enumerate(drop_path)],
                         downsample=build_downsample(downsample, in_dim, dim, norm_layer) if i > 0 else None)

        self.build_stages(make_stage, dims, depths, drop_path_rate, stem_reduction=patch_size)
        self.add_head(norm_layer(self.num_features), global_pool, drop_rate)
        self.apply(init_vssm_weights)

    def checkpoint_filter(self, state_dict: Dict) -> Dict[str, torch.Tensor]:
        return checkpoint_filter_fn(state_dict, self)


# ---- official checkpoint mapping --------------------------------------------------------------------

# official VSSM key -> ours. Official: patch_embed (Sequential), layers.i.blocks.j.{norm,op,norm2,mlp},
# layers.i.downsample (end of stage i, Sequential or PatchMerging2D), classifier.{norm,head}.
_COMMON_RULES = [
    (r"^layers\.(\d+)\.blocks\.(\d+)\.norm\.", r"stages.\1.blocks.\2.norm1."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.op\.", r"stages.\1.blocks.\2.mixer."),
    (r"^layers\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.blocks.\2."),
    (r"^classifier\.norm\.", "norm."),
    (r"^classifier\.head\.", "head.fc."),
]
_V2_RULES = [  # conv stem (patchembed v2), conv downsample (v2 / v3)
    (r"^patch_embed\.0\.", "stem.conv1."),
    (r"^patch_embed\.2\.", "stem.norm1."),
    (r"^patch_embed\.5\.", "stem.conv2."),
    (r"^patch_embed\.7\.", "stem.norm2."),
    (r"^layers\.(\d+)\.downsample\.1\.", r"layers.\1.downsample.conv."),
    (r"^layers\.(\d+)\.downsample\.3\.", r"layers.\1.downsample.norm."),
]
_V0_RULES = [  # patch stem (patchembed v1), patch merging (downsample v1)
    (r"^patch_embed\.0\.", "stem.proj."),
    (r"^patch_embed\.2\.", "stem.norm."),
]


def _shift_downsample(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official ``layers.i.downsample`` ends stage i; ours starts stage i + 1."""
    out = {}
    for k, v in state_dict.items():
        m = re.match(r"^layers\.(\d+)\.downsample\.(.*)$", k)
        out[f"stages.{int(m.group(1)) + 1}.downsample.{m.group(2)}" if m else k] = v
    return out


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: VMamba) -> Dict[str, torch.Tensor]:
    """Map an official VMamba checkpoint (``{'model': sd}`` or ``sd``, v0 or v2 layout) onto ``model``.

    A state dict already in vssm layout passes through the same key check. Raises
    :class:`vssm.CheckpointMismatchError` naming missing / unexpected / mis-shaped keys.
    """
    sd = unwrap_state_dict(state_dict)
    input_conv = ("stem.conv1" if isinstance(model.stem, ConvStem) else "stem.proj")
    if any(k.startswith("stem.") for k in sd):  # already ours
        return match_state_dict(sd, model, input_conv=input_conv)
    rules = (_V2_RULES if isinstance(model.stem, ConvStem) else _V0_RULES) + _COMMON_RULES
    renamed = {}
    for k, v in sd.items():
        for pattern, repl in rules:
            k = re.sub(pattern, repl, k)
        renamed[k] = v
    return match_state_dict(_shift_downsample(renamed), model, input_conv=input_conv)


# ---- configs and factories ----------------------------------------------------------------------------

_RELEASE = "https://github.com/MzeroMiko/VMamba/releases/download"


def _cfg(**kwargs) -> Dict:
    return imagenet_cfg(**{"first_conv": "stem.conv1", "license": "mit", "paper_ids": "arXiv:2401.10166",
                           "paper_name": "VMamba: Visual State Space Model", **kwargs})


# Released models: pretrained=True downloads the official release file (or finds it in timm's torch.hub cache) and
# loads its "model" entry (the official loader's choice; for the v0 small / base releases it holds the EMA weights).
default_cfgs = generate_default_cfgs({
    "vmamba_tiny.in1k": _cfg(
        **release_file(f"{_RELEASE}/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth"),
        notes=("official vmamba_tiny_s1l8, file vssm1_tiny_0230s_ckpt_epoch_264.pth, top-1 82.6",),
    ),
    "vmamba_tiny_s2l5.in1k": _cfg(
        **release_file(f"{_RELEASE}/%23v2cls/vssm_tiny_0230_ckpt_epoch_262.pth"),
        notes=("official vmamba_tiny_s2l5, file vssm_tiny_0230_ckpt_epoch_262.pth, top-1 82.5",),
    ),
    "vmamba_small.in1k": _cfg(
        **release_file(f"{_RELEASE}/%23v2cls/vssm_small_0229_ckpt_epoch_222.pth"),
        notes=("official vmamba_small_s2l15, file vssm_small_0229_ckpt_epoch_222.pth, top-1 83.6",),
    ),
    "vmamba_base.in1k": _cfg(
        **release_file(f"{_RELEASE}/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth"),
        notes=("official vmamba_base_s2l15, file vssm_base_0229_ckpt_epoch_237.pth, top-1 83.9",),
    ),
    "vanilla_vmamba_tiny.in1k": _cfg(
        **release_file(f"{_RELEASE}/%23v0cls/vssmtiny_dp01_ckpt_epoch_292.pth"), first_conv="stem.proj",
        notes=("official vanilla_vmamba_tiny (v0), file vssmtiny_dp01_ckpt_epoch_292.pth, top-1 82.2",),
    ),
    "vanilla_vmamba_small.in1k": _cfg(
        **release_file(f"{_RELEASE}/%23v0cls/vssmsmall_dp03_ckpt_epoch_238.pth"), first_conv="stem.proj",
        notes=("official vanilla_vmamba_small (v0), file vssmsmall_dp03_ckpt_epoch_238.pth (EMA weights under "
               "'model'), top-1 83.5",),
    ),
    "vanilla_vmamba_base.in1k": _cfg(
        **release_file(f"{_RELEASE}/%23v0cls/vssmbase_dp06_ckpt_epoch_241.pth"), first_conv="stem.proj",
        notes=("official vanilla_vmamba_base (v0), file vssmbase_dp06_ckpt_epoch_241.pth (EMA weights under "
               "'model'), top-1 83.7",),
    ),
    "vmamba_nano": _cfg(input_size=(3, 64, 64), pool_size=(2, 2), license="apache-2.0",
                        notes=("small v2-style model for CPU smoke runs; no official weights",)),
})


def _create_vmamba(variant: str, pretrained: bool = False, **kwargs) -> VMamba:
    return build_family_model(VMamba, variant, pretrained, **kwargs)


_V2 = dict(stem="conv", downsample="conv3", d_state=1, ssm_conv=3, ssm_conv_bias=False, gate=False, mlp_ratio=4.0)
_V0 = dict(stem="patch", downsample="merge", d_state=16, ssm_ratio=2.0, ssm_conv=3, ssm_conv_bias=True, gate=True,
           mlp_ratio=0.0)


@register_model
def vmamba_tiny(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T (official ``vmamba_tiny_s1l8``): 30.2M params, 4.9G FLOPs, 82.6 top-1."""
    args = dict(_V2, depths=(2, 2, 8, 2), dims=96, ssm_ratio=1.0)
    return _create_vmamba("vmamba_tiny", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_tiny_s2l5(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-T ``s2l5`` (the official 0230 tiny release): ssm ratio 2, depths 2-2-5-2; 31M params, 4.9G FLOPs,
    82.5 top-1."""
    args = dict(_V2, depths=(2, 2, 5, 2), dims=96, ssm_ratio=2.0)
    return _create_vmamba("vmamba_tiny_s2l5", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_small(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-S (official ``vmamba_small_s2l15``): 50.1M params, 8.7G FLOPs, 83.6 top-1."""
    args = dict(_V2, depths=(2, 2, 15, 2), dims=96, ssm_ratio=2.0)
    return _create_vmamba("vmamba_small", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_base(pretrained: bool = False, **kwargs) -> VMamba:
    """VMamba-B (official ``vmamba_base_s2l15``): 88.6M params, 15.4G FLOPs, 83.9 top-1."""
    args = dict(_V2, depths=(2, 2, 15, 2), dims=128, ssm_ratio=2.0)
    return _create_vmamba("vmamba_base", pretrained, **dict(args, **kwargs))


@register_model
def vanilla_vmamba_tiny(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla VMamba-T (v0 release): 22.9M params, gated SS2D with d_state 16, no MLP, 82.2 top-1."""
    args = dict(_V0, depths=(2, 2, 9, 2), dims=96)
    return _create_vmamba("vanilla_vmamba_tiny", pretrained, **dict(args, **kwargs))


@register_model
def vanilla_vmamba_small(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla VMamba-S (v0 release): depths 2-2-27-2, dims 96; 44M params, 83.5 top-1."""
    args = dict(_V0, depths=(2, 2, 27, 2), dims=96)
    return _create_vmamba("vanilla_vmamba_small", pretrained, **dict(args, **kwargs))


@register_model
def vanilla_vmamba_base(pretrained: bool = False, **kwargs) -> VMamba:
    """Vanilla VMamba-B (v0 release): depths 2-2-27-2, dims 128; 76M params, 83.7 top-1."""
    args = dict(_V0, depths=(2, 2, 27, 2), dims=128)
    return _create_vmamba("vanilla_vmamba_base", pretrained, **dict(args, **kwargs))


@register_model
def vmamba_nano(pretrained: bool = False, **kwargs) -> VMamba:
    """Small v2-style VMamba for CPU smoke tests and the embedded training recipe (no official weights)."""
    args = dict(_V2, depths=(1, 1, 2, 1), dims=(24, 48, 96, 192), ssm_ratio=1.0)
    return _create_vmamba("vmamba_nano", pretrained, **dict(args, **kwargs))
