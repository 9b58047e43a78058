"""What every vssm family shares as a timm model: the model base, the stage builder, the pretrained cfg, the factory.

A staged family (stem -> stages -> norm -> head, channels-last ``(B, H, W, C)`` tokens) subclasses
:class:`StagedBackbone`: its ``__init__`` calls ``super().__init__(in_chans, num_classes, min_input_size)``, sets
``stem``, calls :meth:`StagedBackbone.build_stages` (stages of :class:`Stage`, ``feature_info``, ``num_features``,
``head_hidden_size``, stochastic-depth rates) and :meth:`StagedBackbone.add_head` (or sets its own ``norm`` and
``head`` and overrides the head methods). Every family model (also the plain ones of :mod:`vssm.mamba1d`) is a
:class:`FamilyModel` with two hooks: :meth:`FamilyModel.checkpoint_filter` (the family's ``checkpoint_filter_fn``,
used by timm's loaders and the OpenMMLab adapter) and ``head_modules`` (the top-level modules only the
classification head uses; the OpenMMLab adapter sets them aside). A new family is one model file plus one line in
the shared test table (``tests/_helpers.py`` ``FAMILY_TEST_MODELS``).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, calculate_drop_path_rates, register_notrace_function
from timm.models import build_model_with_cfg, checkpoint_seq, load_pretrained
from timm.models._features import feature_take_indices

from ._checkpoint import load_checkpoint_file
from .layers import ssm_no_weight_decay

__all__ = ["FamilyModel", "StagedBackbone", "Stage", "stage_dims", "check_image", "imagenet_cfg", "release_file",
           "hf_release", "build_family_model"]


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


def stage_dims(dims: Union[int, Sequence[int]], num_stages: int) -> List[int]:
    """Channels per stage: ``dims`` itself (one per stage), or for an int ``d`` the doubling ``(d, 2d, 4d, ...)``."""
    dims = [dims * 2 ** i for i in range(num_stages)] if isinstance(dims, int) else list(dims)
    if len(dims) != num_stages:
        raise ValueError(f"dims {dims} must have the same length as depths ({num_stages} stages)")
    return dims


class FamilyModel(nn.Module):
    """Hooks and loading shared by every vssm family model (staged and plain).

    A family overrides :meth:`checkpoint_filter` (with its module's ``checkpoint_filter_fn``), ``head_modules``
    when more top-level modules than ``norm`` / ``head`` serve only the classifier, ``pretrained_entry`` when its
    official training files keep the published weights under one entry that timm's loader would not take, and
    :meth:`pretrained_file_globals` when those files pickle more than :func:`vssm.load_checkpoint_file` allows.
    """

    head_modules: Tuple[str, ...] = ("norm", "head")
    pretrained_entry: Optional[str] = None

    def checkpoint_filter(self, state_dict: Dict) -> Dict[str, torch.Tensor]:
        """An official or vssm-layout checkpoint -> this model's state dict (the family's mapping and key check)."""
        raise NotImplementedError(f"{type(self).__name__} does not map checkpoints")

    def pretrained_file_globals(self) -> Sequence:
        """Classes an official file may pickle beyond :func:`vssm.load_checkpoint_file`'s allowlist."""
        return ()

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return ssm_no_weight_decay(self)

    @torch.jit.ignore
    def load_pretrained(self, checkpoint_path: str) -> None:
        """timm's ``custom_load`` hook: ``pretrained=True`` (after timm downloads or finds the cfg's file in its
        cache) and ``pretrained_cfg_overlay=dict(file=...)`` call it with the file. It is read with
        ``weights_only=True`` (:func:`vssm.load_checkpoint_file`: official files pickle their training configs),
        its ``pretrained_entry`` taken if it has one, mapped by :meth:`checkpoint_filter` (wrappers, EMA entries,
        official key names) and loaded as timm loads any state dict: classifier and first conv adapted to
        ``num_classes`` / ``in_chans``, strict."""
        checkpoint = load_checkpoint_file(checkpoint_path, map_location="cpu",
                                          extra_globals=self.pretrained_file_globals())
        entry = self.pretrained_entry
        if entry and isinstance(checkpoint, dict) and isinstance(checkpoint.get(entry), dict):
            checkpoint = checkpoint[entry]
        cfg = dict(self.pretrained_cfg, state_dict=checkpoint, custom_load=False, file=None)
        load_pretrained(self, pretrained_cfg=cfg, num_classes=self.num_classes, in_chans=self.in_chans,
                        filter_fn=filter_checkpoint, strict=True)


def filter_checkpoint(state_dict: Dict, model: FamilyModel) -> Dict[str, torch.Tensor]:
    """timm's ``filter_fn(state_dict, model)`` form of :meth:`FamilyModel.checkpoint_filter`."""
    return model.checkpoint_filter(state_dict)


class Stage(nn.Module):
    """``downsample`` -> ``blocks`` -> ``norm`` on channels-last ``(B, H, W, C)`` maps (missing parts: identity).

    ``channels_first``: the blocks take and return ``(B, C, H, W)`` (convolutional stages). ``grad_checkpointing``
    runs the blocks through timm's ``checkpoint_seq``."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: Optional[nn.Module] = None,
                 norm: Optional[nn.Module] = None, channels_first: bool = False):
        super().__init__()
        self.grad_checkpointing = False
        self.channels_first = channels_first
        self.downsample = nn.Identity() if downsample is None else downsample
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.Identity() if norm is None else norm

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.channels_first:
            return self.norm(self.forward_blocks(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        return self.norm(self.forward_blocks(x))


class StagedBackbone(FamilyModel):
    """timm API of a stem -> stages -> norm -> head model with channels-last tokens."""

    def __init__(self, in_chans: int, num_classes: int, min_input_size: int = 1):
        super().__init__()
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.min_input_size = min_input_size
        self.output_fmt = "NHWC"
        self.grad_checkpointing = False

    def build_stages(self, make_stage: Callable[[int, int, int, List[float]], nn.Module], dims: Sequence[int],
                     depths: Sequence[int], drop_path_rate: float, stem_reduction: int = 4) -> None:
        """``stages``, ``feature_info``, ``num_features`` and ``head_hidden_size`` of a pyramid whose stage ``i``
        is ``make_stage(i, dims[i - 1] (dims[0] for i = 0), dims[i], drop_path)`` and halves the resolution
        (stages > 0). ``drop_path``: the stage's stochastic-depth rates, linear over all blocks (timm's
        ``calculate_drop_path_rates``)."""
        if len(dims) != len(depths):
            raise ValueError(f"dims {list(dims)} and depths {list(depths)} must have the same length")
        rates = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        self.stages = nn.Sequential()
        self.feature_info = []
        for i, (dim, drop_path) in enumerate(zip(dims, rates)):
            self.stages.append(make_stage(i, dims[max(i - 1, 0)], dim, drop_path))
            self.feature_info.append(dict(num_chs=dim, reduction=stem_reduction * 2 ** i, module=f"stages.{i}"))
        self.num_features = self.head_hidden_size = dims[-1]

    def add_head(self, norm: nn.Module, global_pool: str = "avg", drop_rate: float = 0.0) -> None:
        """The final ``norm`` and the ``head``: timm's ``ClassifierHead`` on the ``(B, h, w, num_features)`` tokens
        (the head methods below)."""
        self.norm = norm
        self.head = ClassifierHead(self.num_features, self.num_classes, pool_type=global_pool, drop_rate=drop_rate,
                                   input_fmt="NHWC")

    # ---- hooks a family may override -------------------------------------------------------------------

    def final_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage's tokens ``(B, h, w, C_last)`` -> what ``forward_features`` returns (here: normed)."""
        return self.norm(x)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def drop_head(self) -> None:
        """A classifier with no classes (for ``prune_intermediate_layers``)."""
        self.head = ClassifierHead(self.num_features, 0, pool_type="", input_fmt="NHWC")

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    # ---- timm API ------------------------------------------------------------------------------------

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
    cache (``$TORCH_HOME/hub/checkpoints/<file name>``) and hands it to :meth:`FamilyModel.load_pretrained`."""
    return {"url": url, "custom_load": True}


def hf_release(hub_id: str, filename: str) -> Dict:
    """cfg entries of an official file on the Hugging Face hub: huggingface_hub fetches (or finds in its cache)
    ``filename`` of ``hub_id`` and timm hands it to :meth:`FamilyModel.load_pretrained`."""
    return {"hf_hub_id": hub_id, "hf_hub_filename": filename, "custom_load": "hf"}


def build_family_model(cls: Type[FamilyModel], variant: str, pretrained: bool,
                       out_indices: Union[int, Sequence[int]] = (0, 1, 2, 3), file_custom_load: bool = False,
                       **kwargs) -> FamilyModel:
    """``build_model_with_cfg`` with the model's :meth:`FamilyModel.checkpoint_filter` and ``features_only``
    support (``out_indices``: the default feature stages / layers). ``file_custom_load``: a
    ``pretrained_cfg_overlay=dict(file=...)`` keeps ``custom_load`` (timm resets it for a file overlay), so the
    model's :meth:`FamilyModel.load_pretrained` reads the file (its ``pretrained_entry``), not timm's loader."""
    overlay = kwargs.get("pretrained_cfg_overlay")
    if file_custom_load and overlay and overlay.get("file"):
        kwargs["pretrained_cfg_overlay"] = dict(overlay, custom_load=overlay.get("custom_load", True))
    return build_model_with_cfg(
        cls, variant, pretrained,
        pretrained_filter_fn=filter_checkpoint,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )
