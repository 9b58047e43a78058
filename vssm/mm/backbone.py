"""One OpenMMLab backbone for every vssm family: ``dict(type='VSSMBackbone', arch='vmamba_tiny', ...)``.

The adapter wraps the timm model named by ``arch`` (any model registered by ``vssm``), returns a tuple of
``NCHW`` feature maps at strides 4 / 8 / 16 / 32 (those picked by ``out_indices``), each passed through its
own LayerNorm as in the official detection / segmentation backbones, and loads official classification
checkpoints through the family's own ``checkpoint_filter_fn`` (the same mapping timm uses).

A family plugs in by providing, on the timm model: ``stem`` and ``stages`` (an indexable container of
stages, stage ``i`` producing ``feature_info[i]``), ``feature_info``, ``forward_intermediates`` (timm
signature), ``set_grad_checkpointing``, and the :class:`vssm._backbone.FamilyModel` hooks ``checkpoint_filter``
(official checkpoint -> state dict) and ``head_modules`` (the modules only the classification head uses).
The plain (one-width) families Vim and Mamba-ND have ``patch_embed`` and ``layers`` instead: every layer counts
as a stage, and ``pyramid=True`` turns their stride-16 maps into maps at strides 4 / 8 / 16 / 32.
timm's own EfficientViM (``efficientvim_m1`` .. ``efficientvim_m4``, ``*_dist``) is served as timm ships it
(``patch_embed`` and ``stages``): three maps at strides 16 / 32 / 64, official checkpoints through timm's filter.
"""
from __future__ import annotations

import contextlib
import importlib
import re
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import BaseModule

from .._checkpoint import CheckpointMismatchError, match_state_dict, unwrap_state_dict

__all__ = ["VSSMBackbone", "list_archs", "load_backbone_checkpoint"]


# timm's own model families that the adapter serves as they are (no vssm re-implementation)
_TIMM_FAMILIES = ("timm.models.efficientvim",)


def list_archs() -> List[str]:
    """timm model names registered by vssm, and those of :data:`_TIMM_FAMILIES` (the values ``arch`` accepts)."""
    import vssm  # noqa: F401  (registers the families)
    out = []
    for name in timm.list_models():
        try:
            module = timm.models.model_entrypoint(name).__module__
        except RuntimeError:
            continue
        if module.startswith("vssm.") or module in _TIMM_FAMILIES:
            out.append(name)
    return sorted(out)


def _head_modules(model: nn.Module) -> Tuple[str, ...]:
    """Top-level modules of the timm model that only the classification head uses (forward_intermediates with
    norm=False never touches them): the family's ``head_modules``."""
    return tuple(getattr(model, "head_modules", ("norm", "head")))


def _checkpoint_filter(model: nn.Module) -> Optional[Callable[[dict], dict]]:
    """The mapping of official files onto ``model``: a vssm family's ``checkpoint_filter`` hook, or the
    ``checkpoint_filter_fn`` of a timm family of :data:`_TIMM_FAMILIES`; None for neither."""
    if hasattr(model, "checkpoint_filter"):
        return model.checkpoint_filter
    if type(model).__module__ in _TIMM_FAMILIES:
        filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is not None:
            return lambda state_dict: filter_fn(state_dict, model)
    return None


def _trunk_names(model: nn.Module) -> Tuple[str, str]:
    """Attribute names ``(stem, stages)``: a staged family's ``stem`` / ``stages``, or a plain family's
    ``patch_embed`` / ``layers`` (one layer per 'stage'); ``('', '')`` if neither."""
    for stem, stages in (("stem", "stages"), ("patch_embed", "layers"), ("patch_embed", "stages")):
        if hasattr(model, stem) and hasattr(model, stages):
            return stem, stages
    return "", ""


class SimpleFeaturePyramid(nn.Module):
    """Stride-s maps of a plain backbone -> maps at strides s/4, s/2, s, 2s (BEiT / ViTDet style, the official Vim
    segmentation neck): deconv 2x2 -> BatchNorm -> GELU -> deconv 2x2; deconv 2x2; identity; max-pool 2x2. Four
    input maps get one operation each (in that order); a single map gets all four. Channels are kept."""

    def __init__(self, channels: int):
        super().__init__()
        self.ops = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(channels, channels, 2, stride=2), nn.BatchNorm2d(channels), nn.GELU(),
                          nn.ConvTranspose2d(channels, channels, 2, stride=2)),
            nn.ConvTranspose2d(channels, channels, 2, stride=2),
            nn.Identity(),
            nn.MaxPool2d(kernel_size=2, stride=2),
        ])

    def forward(self, maps: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        maps = list(maps) * 4 if len(maps) == 1 else list(maps)
        return [op(m) for op, m in zip(self.ops, maps)]


def _read_checkpoint(path: str, map_location="cpu"):
    from mmengine.runner import CheckpointLoader
    return CheckpointLoader.load_checkpoint(path, map_location=map_location)


class VSSMBackbone(BaseModule):
    """vssm model as an mmdet / mmseg backbone.

    Args:
        arch: timm model name registered by vssm (``vmamba_tiny``, ...); see :func:`list_archs`.
        out_indices: stages whose outputs are returned (0..num_stages-1, strides 4, 8, 16, 32; EfficientViM:
            0..2, strides 16, 32, 64).
        drop_path_rate: stochastic depth of the timm model (linear over all blocks).
        frozen_stages: -1 trains everything; 0 freezes the stem; k >= 1 freezes the stem and stages
            0..k-1 with their output norms (kept in eval mode, no gradients).
        with_cp: gradient checkpointing of every stage (saves activation memory).
        out_norm: LayerNorm on every returned map (the official detection backbones have one per stage).
        pyramid: plain families only (Vim, Mamba-ND): :class:`SimpleFeaturePyramid` on the maps of
            ``out_indices`` (one layer, or four), returning strides 4 / 8 / 16 / 32 (after the out norms).
        norm_eval: keep every BatchNorm of the timm model in eval mode while training (running statistics
            frozen, affine parameters still trained), as the official EfficientViM dense backbones do.
        model_kwargs: extra keyword arguments for ``timm.create_model`` (e.g. ``scan_backend='triton'``).
        pretrained: shorthand for ``init_cfg=dict(type='Pretrained', checkpoint=pretrained)``.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH[, prefix='backbone.'])``. PATH is an official
            classification checkpoint (mapped with the family's ``checkpoint_filter_fn``), a vssm / timm state
            dict, or a checkpoint of this adapter (e.g. an mmdet/mmseg training checkpoint, whose
            ``backbone.`` keys are used). Missing backbone weights raise
            :class:`vssm.CheckpointMismatchError`; the output norms may be absent (they keep their init).
    """

    def __init__(
            self,
            arch: str = "vmamba_tiny",
            out_indices: Sequence[int] = (0, 1, 2, 3),
            drop_path_rate: float = 0.0,
            frozen_stages: int = -1,
            with_cp: bool = False,
            out_norm: bool = True,
            pyramid: bool = False,
            norm_eval: bool = False,
            model_kwargs: Optional[Dict] = None,
            pretrained: Optional[str] = None,
            init_cfg: Optional[Union[Dict, List[Dict]]] = None,
    ):
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError("VSSMBackbone: give either pretrained= or init_cfg=, not both")
            if not isinstance(pretrained, str):
                raise TypeError(f"VSSMBackbone: pretrained must be a checkpoint path, got {type(pretrained)}")
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        super().__init__(init_cfg=init_cfg)

        archs = list_archs()
        if arch not in archs:
            raise ValueError(f"VSSMBackbone: unknown arch {arch!r}; available: {', '.join(archs)}")
        self.arch = arch
        model_kwargs = dict(model_kwargs or {})
        for key in ("num_classes", "features_only", "pretrained"):
            if key in model_kwargs:
                raise ValueError(f"VSSMBackbone: model_kwargs may not set {key!r} (the adapter controls it)")
        self.model = timm.create_model(arch, pretrained=False, num_classes=0, drop_path_rate=drop_path_rate,
                                       **model_kwargs)
        self._stem_name, self._stages_name = _trunk_names(self.model)
        missing = [a for a in ("feature_info", "forward_intermediates", "set_grad_checkpointing")
                   if not hasattr(self.model, a)]
        if not self._stages_name:
            missing.append("stem/stages (or patch_embed/layers)")
        if missing:
            raise TypeError(f"VSSMBackbone: {arch} ({type(self.model).__name__}) lacks {missing}, which the "
                            f"adapter needs")
        num_stages = len(getattr(self.model, self._stages_name))

        out_indices = tuple(out_indices) if not isinstance(out_indices, int) else (out_indices,)
        if not out_indices:
            raise ValueError("VSSMBackbone: out_indices is empty")
        bad = [i for i in out_indices if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < num_stages]
        if bad:
            raise ValueError(f"VSSMBackbone: out_indices {out_indices} out of range for {arch} with {num_stages} "
                             f"stages (valid: 0..{num_stages - 1})")
        if len(set(out_indices)) != len(out_indices) or list(out_indices) != sorted(out_indices):
            raise ValueError(f"VSSMBackbone: out_indices must be increasing and unique, got {out_indices}")
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= num_stages:
            raise ValueError(f"VSSMBackbone: frozen_stages must be in -1..{num_stages}, got {frozen_stages!r}")
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.num_stages = num_stages
        self.channels = [self.model.feature_info[i]["num_chs"] for i in out_indices]
        self.strides = [self.model.feature_info[i]["reduction"] for i in out_indices]
        if pyramid:
            if self._stages_name != "layers":
                raise ValueError(f"VSSMBackbone: pyramid=True is for the plain families (Vim, Mamba-ND), not {arch}")
            if len(out_indices) not in (1, 4) or len(set(self.channels)) != 1 or len(set(self.strides)) != 1:
                raise ValueError(f"VSSMBackbone: pyramid=True needs one or four out_indices of one width and stride, "
                                 f"got {out_indices} (channels {self.channels}, strides {self.strides})")
        self.channels_last = getattr(self.model, "output_fmt", "NCHW") == "NHWC"

        # one norm per returned map, named by stage index (out_norms.<i>) so checkpoints survive a change
        # of out_indices
        self.out_norms = nn.ModuleDict({
            str(i): (nn.LayerNorm(c) if out_norm else nn.Identity()) for i, c in zip(out_indices, self.channels)
        })
        self.pyramid = SimpleFeaturePyramid(self.channels[0]) if pyramid else None
        if pyramid:
            self.channels, self.strides = self.channels[:1] * 4, [self.strides[0] * f for f in (0.25, 0.5, 1, 2)]

        # parameters the forward never uses (the classification head's modules: final norm, classifier, GroupMamba's
        # class-token block; stages past the last output) must not require grad, or DDP complains about unused
        # parameters. They stay in the model: official checkpoints hold them and load with the full key check.
        self._unused_prefixes = [f"{m}." for m in _head_modules(self.model)] + [
            f"{self._stages_name}.{i}." for i in range(max(out_indices) + 1, num_stages)]
        for name, p in self.model.named_parameters():
            if any(name.startswith(pre) for pre in self._unused_prefixes):
                p.requires_grad_(False)

        if with_cp:
            self.model.set_grad_checkpointing(True)
        self.with_cp = with_cp
        self.norm_eval = norm_eval
        self._freeze_stages()

    # ---- training mode / freezing --------------------------------------------------------------------

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        mods = [getattr(self.model, self._stem_name)]
        for i in range(self.frozen_stages):
            mods.append(getattr(self.model, self._stages_name)[i])
            if str(i) in self.out_norms:
                mods.append(self.out_norms[str(i)])
        return mods

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)
        if self.frozen_stages >= 0:  # the plain families' embeddings belong to the stem
            for name in ("pos_embed", "cls_token"):
                if isinstance(getattr(self.model, name, None), nn.Parameter):
                    getattr(self.model, name).requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    # ---- forward ---------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        feats = self.model.forward_intermediates(
            x, indices=list(self.out_indices), norm=False, stop_early=True,
            output_fmt="NHWC" if self.channels_last else "NCHW", intermediates_only=True)
        outs = []
        for i, f in zip(self.out_indices, feats):
            if not self.channels_last:
                f = f.permute(0, 2, 3, 1)
            f = self.out_norms[str(i)](f)
            outs.append(f.permute(0, 3, 1, 2).contiguous())
        if self.pyramid is not None:
            outs = self.pyramid(outs)
        return tuple(outs)

    # ---- weights -------------------------------------------------------------------------------------

    def init_weights(self) -> None:
        cfg = self.init_cfg
        cfgs = [cfg] if isinstance(cfg, dict) else list(cfg or [])
        pretrained = [c for c in cfgs if c.get("type") == "Pretrained"]
        others = [c for c in cfgs if c.get("type") != "Pretrained"]
        if others:  # e.g. a custom init for the out norms: let mmengine apply it first
            self.init_cfg = others
            super().init_weights()
            self.init_cfg = cfg
        # without Pretrained the timm model keeps its own (official) initialisation
        for c in pretrained:
            if "checkpoint" not in c:
                raise ValueError(f"VSSMBackbone: init_cfg {c} has no 'checkpoint'")
            load_backbone_checkpoint(self, c["checkpoint"], prefix=c.get("prefix"))
        self._is_init = True


# per-level output norms of the official dense (detection / segmentation) backbones: outnorm{i}.* -> out_norms.{i}.*
_OFFICIAL_OUT_NORM = re.compile(r"^outnorm(\d+)\.")


@contextlib.contextmanager
def _without_head(model: nn.Module):
    """The model with its classification-only modules (final norm, classifier, class block) set aside, for the
    official dense checkpoints, which drop them: they keep their init."""
    names = [n for n in _head_modules(model) if isinstance(getattr(model, n, None), nn.Module)]
    kept = {n: getattr(model, n) for n in names}
    for n in names:
        setattr(model, n, nn.Identity())
    try:
        yield model
    finally:
        for n, m in kept.items():
            setattr(model, n, m)


def load_backbone_checkpoint(backbone: VSSMBackbone, path: str, prefix: Optional[str] = None) -> Dict[str, list]:
    """Load ``path`` into ``backbone`` (see :class:`VSSMBackbone` ``init_cfg``). Returns the keys left at
    their initial values (``{'missing': [...]}``: only output norms can be)."""
    ckpt = _read_checkpoint(path)
    sd = unwrap_state_dict(ckpt)
    if prefix is None and any(k.startswith("backbone.") for k in sd):
        prefix = "backbone."
    if prefix:
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not sd:
            raise CheckpointMismatchError(backbone.arch, missing=["<any key with prefix %r>" % prefix])
    own_keys = set(backbone.state_dict())
    if any(k.startswith("model.") for k in sd):  # this adapter's own layout
        out_norm_sd = {k: v for k, v in sd.items() if k.startswith("out_norms.")}
        model_sd = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
        extra = [k for k in sd if not k.startswith(("model.", "out_norms."))]
        if extra:
            raise CheckpointMismatchError(backbone.arch, unexpected=extra)
    else:
        out_norm_sd, model_sd = {}, sd
    dense = [k for k in model_sd if _OFFICIAL_OUT_NORM.match(k)]
    if dense:  # an official dense backbone: output norms outnorm{i}, no final norm / classifier
        out_norm_sd.update({_OFFICIAL_OUT_NORM.sub(r"out_norms.\1.", k): model_sd.pop(k) for k in dense})
    with _without_head(backbone.model) if dense else contextlib.nullcontext(backbone.model) as model:
        filter_fn = _checkpoint_filter(model)
        model_sd = filter_fn(model_sd) if filter_fn is not None else match_state_dict(model_sd, model)
        target = model.state_dict()
        # the classifier is not part of the backbone; timm's filters keep it, we drop it
        model_sd = {k: v for k, v in model_sd.items() if k in target}
        missing = [k for k in target if k not in model_sd]
        if missing:
            raise CheckpointMismatchError(backbone.arch, missing=missing)
        model.load_state_dict(model_sd, strict=True)
    unexpected = [k for k in out_norm_sd if k not in own_keys]
    if unexpected:
        raise CheckpointMismatchError(backbone.arch, unexpected=unexpected)
    result = backbone.out_norms.load_state_dict(
        {k[len("out_norms."):]: v for k, v in out_norm_sd.items()}, strict=False)
    left = [f"out_norms.{k}" for k in result.missing_keys]
    print_log(f"VSSMBackbone({backbone.arch}): loaded {len(model_sd) + len(out_norm_sd)} tensors from {path}"
              + (f"; {len(left)} output-norm tensors keep their init" if left else ""), logger="current")
    return {"missing": left}
