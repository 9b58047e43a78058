"""``EfficientViTFPN``: the detection neck of EfficientViM (mlvlab/EfficientViM ``detection/efficientvit_fpn.py``,
mmdet 2.x, from EfficientViT / LightViT) for mmdet 3.x.

An FPN whose extra fine levels come from 2x2 stride-2 transposed convolutions on the finest lateral, for
backbones that start at stride 16: EfficientViM's maps at strides 16 / 32 / 64 become strides 4 / 8 / 16 / 32 / 64
(Mask R-CNN, ``num_extra_trans_convs=2``) or 8 / 16 / 32 / 64 / 128 (RetinaNet, one transposed conv and a
stride-2 conv on the last input, ``add_extra_convs='on_input'``). ``pre_norm=True`` puts a channel LayerNorm
on every input map first. Parameter names are the official ones (``lateral_convs``, ``fpn_convs``,
``batch_norm`` (the pre-norms), ``extra_trans_convs``, ``extra_fpn_convs``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model import BaseModule
from timm.layers import LayerNorm2d

__all__ = ["EfficientViTFPN"]

_EXTRA_SOURCES = ("on_input", "on_lateral", "on_output")


class EfficientViTFPN(BaseModule):
    """FPN with transposed-conv extra levels below the finest input.

    Args:
        in_channels: channels of each input map (finest first).
        out_channels: channels of every output map.
        num_outs: number of output maps: ``num_extra_trans_convs`` finer maps, one per used input level, then
            coarser extra levels (stride-2 convs if ``add_extra_convs``, else stride-2 max pooling of the last).
        start_level / end_level: the input levels used (``end_level`` exclusive, -1: up to the last).
        add_extra_convs: False, True (``'on_input'``) or the source of the first extra conv: ``'on_input'``
            (the last used input map), ``'on_lateral'`` or ``'on_output'``.
        relu_before_extra_convs: ReLU before the extra convs after the first.
        no_norm_on_lateral: no norm in the lateral 1x1 convs and the transposed convs.
        num_extra_trans_convs: finer levels from 2x2 stride-2 transposed convs, each on the previous one
            (the first on the finest lateral after the top-down pass), followed by a 3x3 conv.
        pre_norm: a channel LayerNorm (eps 1e-5) on each used input map before its lateral conv.
        conv_cfg / norm_cfg / act_cfg: of the ConvModules (the official configs: none of them).
        upsample_cfg: ``F.interpolate`` arguments of the top-down pass.
        init_cfg: Xavier-uniform on the Conv2d layers (the transposed convs keep ConvModule's Kaiming init), as
            the official ``init_weights``.
    """

    def __init__(
            self,
            in_channels: Sequence[int],
            out_channels: int,
            num_outs: int,
            start_level: int = 0,
            end_level: int = -1,
            add_extra_convs: Union[bool, str] = False,
            relu_before_extra_convs: bool = False,
            no_norm_on_lateral: bool = False,
            num_extra_trans_convs: int = 0,
            pre_norm: bool = False,
            conv_cfg: Optional[Dict] = None,
            norm_cfg: Optional[Dict] = None,
            act_cfg: Optional[Dict] = None,
            upsample_cfg: Optional[Dict] = None,
            init_cfg: Optional[Union[Dict, List[Dict]]] = dict(type="Xavier", layer="Conv2d", distribution="uniform"),
    ):
        super().__init__(init_cfg=init_cfg)
        if not isinstance(in_channels, (list, tuple)) or not in_channels:
            raise ValueError(f"EfficientViTFPN: in_channels must be a non-empty list, got {in_channels!r}")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_ins = len(in_channels)
        self.num_outs = num_outs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.num_extra_trans_convs = num_extra_trans_convs
        self.upsample_cfg = dict(mode="nearest") if upsample_cfg is None else dict(upsample_cfg)
        if not 0 <= start_level < self.num_ins:
            raise ValueError(f"EfficientViTFPN: start_level {start_level} out of range for {self.num_ins} inputs")
        self.start_level = start_level
        self.backbone_end_level = self.num_ins if end_level == -1 else end_level
        if not start_level < self.backbone_end_level <= self.num_ins:
            raise ValueError(f"EfficientViTFPN: end_level {end_level} out of range for {self.num_ins} inputs "
                             f"and start_level {start_level}")
        used = self.backbone_end_level - start_level
        extra_levels = num_outs - used - num_extra_trans_convs
        if end_level != -1 and extra_levels != 0:
            raise ValueError(f"EfficientViTFPN: with end_level={end_level}, num_outs must be {used} + "
                             f"num_extra_trans_convs ({num_extra_trans_convs}), got {num_outs}")
        if num_extra_trans_convs < 0 or extra_levels < 0:
            raise ValueError(f"EfficientViTFPN: num_outs {num_outs} < {used} used input levels + "
                             f"{num_extra_trans_convs} transposed-conv levels")
        if add_extra_convs is True:
            add_extra_convs = "on_input"
        if add_extra_convs not in (False, *_EXTRA_SOURCES):
            raise ValueError(f"EfficientViTFPN: add_extra_convs must be a bool or one of {_EXTRA_SOURCES}, "
                             f"got {add_extra_convs!r}")
        self.add_extra_convs = add_extra_convs

        def conv(cin, k, stride=1, norm=norm_cfg, cfg=conv_cfg):
            return ConvModule(cin, out_channels, k, stride=stride, padding=1 if k == 3 else 0,
                              conv_cfg=cfg, norm_cfg=norm, act_cfg=act_cfg, inplace=False)

        lateral_norm = None if no_norm_on_lateral else norm_cfg
        levels = range(start_level, self.backbone_end_level)
        self.pre_norm = pre_norm
        self.batch_norm = nn.ModuleList([LayerNorm2d(in_channels[i], eps=1e-5) for i in levels] if pre_norm else [])
        self.lateral_convs = nn.ModuleList([conv(in_channels[i], 1, norm=lateral_norm) for i in levels])
        self.fpn_convs = nn.ModuleList([conv(out_channels, 3) for _ in levels])
        if add_extra_convs:
            for i in range(extra_levels):
                cin = in_channels[self.backbone_end_level - 1] if i == 0 and add_extra_convs == "on_input" \
                    else out_channels
                self.fpn_convs.append(conv(cin, 3, stride=2))
        self.extra_trans_convs = nn.ModuleList([
            conv(out_channels, 2, stride=2, norm=lateral_norm, cfg=dict(type="deconv"))
            for _ in range(num_extra_trans_convs)])
        self.extra_fpn_convs = nn.ModuleList([conv(out_channels, 3) for _ in range(num_extra_trans_convs)])
        for m in self.batch_norm:  # official checkpoints store the pre-norms as (1, C, 1, 1)
            m._register_load_state_dict_pre_hook(_flatten_norm_params)

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """``inputs``: ``len(in_channels)`` maps (B, C_i, H_i, W_i), finest first -> ``num_outs`` maps
        (B, out_channels, ., .), finest first."""
        if len(inputs) != self.num_ins:
            raise ValueError(f"EfficientViTFPN: expected {self.num_ins} input maps, got {len(inputs)}")
        used = list(inputs[self.start_level:self.backbone_end_level])
        if self.pre_norm:
            used = [norm(x) for norm, x in zip(self.batch_norm, used)]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, used)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            if "scale_factor" in self.upsample_cfg:
                up = F.interpolate(laterals[i], **self.upsample_cfg)
            else:
                up = F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], **self.upsample_cfg)
            laterals[i - 1] = laterals[i - 1] + up
        fine, prev = [], laterals[0]
        for trans in self.extra_trans_convs:
            prev = trans(prev)
            fine.insert(0, prev)
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        n_coarse = self.num_outs - len(fine) - len(laterals)
        if n_coarse and not self.add_extra_convs:
            for _ in range(n_coarse):
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        elif n_coarse:
            # 'on_input': the last used input, after its pre-norm (as the official forward)
            source = {"on_input": used[-1], "on_lateral": laterals[-1], "on_output": outs[-1]}[self.add_extra_convs]
            outs.append(self.fpn_convs[len(laterals)](source))
            for conv in self.fpn_convs[len(laterals) + 1:]:
                outs.append(conv(F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]))
        fine = [conv(x) for conv, x in zip(self.extra_fpn_convs, fine)]
        return tuple(fine + outs)


def _flatten_norm_params(state_dict, prefix, *args):
    for name in ("weight", "bias"):
        key = prefix + name
        if key in state_dict and state_dict[key].dim() == 4:
            state_dict[key] = state_dict[key].flatten()
