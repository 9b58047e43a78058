"""What every vssm family shares as a timm model: the staged-backbone API, the pretrained cfg, the factory.

A family's model subclasses :class:`StagedBackbone` and provides ``stem``, ``stages`` (an ``nn.Sequential``
of stages that take and return channels-last ``(B, H, W, C)`` tokens, each with a ``grad_checkpointing``
flag), ``norm``, ``head``, ``feature_info``, ``in_chans``, ``min_input_size``, ``num_classes``,
``forward_head``, ``reset_classifier`` and ``drop_head()`` (give the model a classifier with no classes, for
``prune_intermediate_layers``); it overrides :meth:`StagedBackbone.final_features` if its final norm is not
applied to the last stage's tokens.
"""
from __future__ import annotations

import sys
from typing import Callable, Dict, List, Optional, Tuple, Type, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_function
from timm.models import build_model_with_cfg, load_pretrained
from timm.models._features import feature_take_indices

from ._checkpoint import load_checkpoint_file
from .layers import ssm_no_weight_decay

__all__ = ["StagedBackbone", "check_image", "imagenet_cfg", "release_file", "hf_release", "build_family_model"]


@register_notrace_function
def check_image(x: torch.Tensor, in_chans: int, min_size: int, name: str) -> torch.Tensor:
    """``x`` unchanged if it is a ``(B, in_chans, H, W)`` image with H, W >= ``min_size``; else ``ValueError``
    (wrong rank, channels, too small). A torch.fx leaf: traced models keep the check."""
    if x.dim() != 4:
        raise ValueError(f"{name} expects a (batch, {in_chans}, H, W) image tensor, got shape {tuple(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"{name} was built for {in_chans} input channels, got {x.shape[1]} (input shape "
                         f"{tuple(x.shape)}); pass in_chans= to create_model")
    H, W = x.shape[-2:]
    least = max(min_size, 1)
    if H < least or W < least:
        raise ValueError(f"input {H}x{W} is too small for {name}: height and width must be at least {least}")
    return x


class StagedBackbone(nn.Module):
    """timm API of a stem -> stages -> norm -> head model with channels-last tokens."""

    # ---- hooks a family may override -------------------------------------------------------------------

    def final_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's tokens ``(B, h, w, C_last)`` -> what ``forward_features`` returns (here: normed)."""
        return self.norm(x)

    # ---- timm API ------------------------------------------------------------------------------------

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return ssm_no_weight_decay(self)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)" if coarse else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` unchanged; ``ValueError`` for inputs the model cannot take (wrong rank, channels, too small).
        Under torch.fx it is one leaf call (the checks run when the traced graph runs)."""
        return check_image(x, self.in_chans, self.min_input_size, type(self).__name__)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward returning the stage outputs selected by ``indices`` (int: last n; None: all).

        Args:
            norm: apply the final norm to the last stage's output when it is taken.
            stop_early: stop after the last stage needed.  output_fmt: 'NCHW' or 'NHWC' intermediates.
            intermediates_only: return only the list of intermediates; else ``(forward_features, list)``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        x = self.check_input(x)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages if (torch.jit.is_scripting() or not stop_early) else self.stages[:max_index + 1]
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                y = self.norm(x) if (norm and i == last) else x
                intermediates.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
        if intermediates_only:
            return intermediates
        return self.final_features(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages (and norm / head) not needed for the intermediates in ``indices``."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_head or prune_end:
            self.drop_head()
            self.num_classes = 0
        return take_indices

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str) -> None:
        """timm's ``custom_load`` hook: ``pretrained=True`` (after timm downloads or finds the cfg's file in its
        cache) and ``pretrained_cfg_overlay=dict(file=...)`` call it with the file. It is read with
        ``weights_only=True`` (:func:`vssm.load_checkpoint_file`: official files pickle their training configs),
        mapped by the family's ``checkpoint_filter_fn`` (wrappers, EMA entries, official key names) and loaded as
        timm loads any state dict: classifier and first conv adapted to ``num_classes`` / ``in_chans``, strict."""
        checkpoint = load_checkpoint_file(checkpoint_path, map_location="cpu")
        cfg = dict(self.pretrained_cfg, state_dict=checkpoint, custom_load=False, file=None)
        load_pretrained(self, pretrained_cfg=cfg, num_classes=self.num_classes, in_chans=self.in_chans,
                        filter_fn=sys.modules[type(self).__module__].checkpoint_filter_fn, strict=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image ``(B, C, H, W)`` -> final tokens ``(B, h, w, C_last)`` (channels-last)."""
        x = self.check_input(x)
        return self.final_features(self.stages(self.stem(x)))

    def forward(self, x: torch.Tensor):
        return self.forward_head(self.forward_features(x))


def imagenet_cfg(**kwargs) -> Dict:
    """timm pretrained cfg of an ImageNet-1k 224x224 model; a family passes its paper, license, first conv,
    classifier and, for a released model, the file (:func:`release_file` / :func:`hf_release`)."""
    return {
        "url": "",
        "num_classes": 1000, "input_size": (3, 224, 224), "min_input_size": (3, 32, 32), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "classifier": "head.fc",
        **kwargs,
    }


def release_file(url: str) -> Dict:
    """cfg entries of an official file at ``url`` (e.g. a GitHub release): timm downloads it into its torch.hub
    cache (``$TORCH_HOME/hub/checkpoints/<file name>``) and hands it to :meth:`StagedBackbone.load_pretrained`."""
    return {"url": url, "custom_load": True}


def hf_release(hub_id: str, filename: str) -> Dict:
    """cfg entries of an official file on the Hugging Face hub: huggingface_hub fetches (or finds in its cache)
    ``filename`` of ``hub_id`` and timm hands it to :meth:`StagedBackbone.load_pretrained`."""
    return {"hf_hub_id": hub_id, "hf_hub_filename": filename, "custom_load": "hf"}


def build_family_model(cls: Type[nn.Module], variant: str, pretrained: bool, checkpoint_filter_fn: Callable,
                       **kwargs) -> nn.Module:
    """``build_model_with_cfg`` with the family's checkpoint filter and 4-stage ``features_only`` support."""
    return build_model_with_cfg(
        cls, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
        **kwargs,
    )
