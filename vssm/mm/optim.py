"""Optimizer-wrapper constructor for detectors / segmentors with a :class:`VSSMBackbone`.

``optim_wrapper = dict(constructor='VSSMOptimWrapperConstructor', optimizer=dict(type='AdamW', ...),
paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}, layer_decay_rate=1.0))``

On top of mmengine's ``DefaultOptimWrapperConstructor`` (``custom_keys``, ``norm_decay_mult``, ... all work as
usual) it

* sets weight decay 0 on the backbone's SSM parameters (``A_logs``, ``Ds``, ``dt_projs_bias`` and any other
  parameter a family flags with ``_no_weight_decay``) and on position embeddings (``no_decay_ssm=True``);
* optionally scales the backbone's learning rates layer by layer: ``layer_decay_rate`` r < 1 multiplies the
  lr of backbone layer ``l`` (``0`` = stem, one id per block for ``layer_decay_type='layer_wise'``, one per
  stage for ``'stage_wise'``, using the timm model's ``group_matcher``) by ``r ** (L + 1 - l)`` with ``L``
  the last layer id; the rest of the detector and the output norms keep the full lr.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor
from timm.models import group_parameters

from .backbone import VSSMBackbone

__all__ = ["VSSMOptimWrapperConstructor", "backbone_layer_ids"]

_OWN_KEYS = ("layer_decay_rate", "layer_decay_type", "no_decay_ssm")
_DECAY_TYPES = ("layer_wise", "stage_wise")
_POS_EMBED_SUFFIXES = ("pos_embed", "absolute_pos_embed", "pos_embedding")


def backbone_layer_ids(backbone: VSSMBackbone, decay_type: str = "layer_wise") -> Tuple[Dict[str, int], int]:
    """``({param name inside backbone.model: layer id}, last id)`` from the model's timm ``group_matcher``."""
    if decay_type not in _DECAY_TYPES:
        raise ValueError(f"layer_decay_type must be one of {_DECAY_TYPES}, got {decay_type!r}")
    model = backbone.model
    matcher = model.group_matcher(coarse=decay_type == "stage_wise")
    ids = group_parameters(model, matcher, reverse=True)
    return dict(ids), max(ids.values())


class VSSMOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """See the module docstring. Extra ``paramwise_cfg`` keys: ``layer_decay_rate`` (float in (0, 1], default
    1.0 = off), ``layer_decay_type`` ('layer_wise' | 'stage_wise'), ``no_decay_ssm`` (bool, default True)."""

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        self.layer_decay_rate = float(paramwise_cfg.pop("layer_decay_rate", 1.0))
        self.layer_decay_type = paramwise_cfg.pop("layer_decay_type", "layer_wise")
        self.no_decay_ssm = bool(paramwise_cfg.pop("no_decay_ssm", True))
        if not 0.0 < self.layer_decay_rate <= 1.0:
            raise ValueError(f"layer_decay_rate must be in (0, 1], got {self.layer_decay_rate}")
        if self.layer_decay_type not in _DECAY_TYPES:
            raise ValueError(f"layer_decay_type must be one of {_DECAY_TYPES}, got {self.layer_decay_type!r}")
        super().__init__(optim_wrapper_cfg, paramwise_cfg)
        if self.no_decay_ssm and self.base_wd is None:
            raise ValueError("VSSMOptimWrapperConstructor: the optimizer needs an explicit weight_decay")
        # mmengine only takes the param-wise path when paramwise_cfg is non-empty
        if not self.paramwise_cfg:
            self.paramwise_cfg = {"custom_keys": {}}

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = "", is_dcn_module=None) -> None:
        super().add_params(params, module, prefix=prefix, is_dcn_module=is_dcn_module)
        if prefix:  # recursive call from mmengine: post-process once, at the top level
            return
        owner = {}  # id(param) -> (backbone, name inside backbone)
        for mod_name, mod in module.named_modules():
            if isinstance(mod, VSSMBackbone):
                for pname, p in mod.named_parameters():
                    owner[id(p)] = (mod, pname)
        layer_cache = {}
        for group in params:
            if len(group["params"]) != 1 or id(group["params"][0]) not in owner:
                continue
            p = group["params"][0]
            backbone, pname = owner[id(p)]
            if self.no_decay_ssm and (getattr(p, "_no_weight_decay", False) or pname.endswith(_POS_EMBED_SUFFIXES)):
                group["weight_decay"] = 0.0
            if self.layer_decay_rate < 1.0 and pname.startswith("model."):
                if id(backbone) not in layer_cache:
                    layer_cache[id(backbone)] = backbone_layer_ids(backbone, self.layer_decay_type)
                ids, last = layer_cache[id(backbone)]
                layer = ids.get(pname[len("model."):], last + 1)
                scale = self.layer_decay_rate ** (last + 1 - layer)
                group["lr"] = group.get("lr", self.base_lr) * scale
                group["lr_scale"] = scale
