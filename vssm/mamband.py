"""Mamba-ND (2D image models): a plain Mamba backbone whose layers alternate the scan order, as a timm model family.

Paper: "Mamba-ND: Selective State Space Modeling for Multi-Dimensional Data" (Li et al., ECCV 2024),
https://arxiv.org/abs/2402.05892. Official code and weights: https://github.com/jacklishufan/Mamba-ND.
This is an independent implementation; ``checkpoint_filter_fn`` maps the official mmpretrain checkpoints
(``backbone.`` / ``head.`` prefixes) onto it, giving the official logits (float32, max abs difference < 1e-4).

Architecture (``image_classification/config/mamba2d.py`` / ``mamba2d_b.py``):
  * 8x8 patch conv (the input zero-padded bottom/right to a multiple of 8), learned absolute position embedding
    (resampled bicubically for other grids, as the official code does at run time).
  * 24 layers ``x = norm(x); x = x + drop_path(mixer(x))`` (the official non-fused block: the residual is the
    NORMED input), the mixer a one-direction :class:`vssm.mamba1d.MambaMixer` run on the tokens in the order of
    layer ``i % 4``: row-major, reversed row-major, column-major, reversed column-major (the single-sequence
    ``window`` patterns ``h``, ``h_flip``, ``v``, ``v_flip`` of :mod:`vssm.scans`). Non-square maps work (the
    official code assumes square ones).
  * a 2x2 patch merging (width kept) after layer 9: the map goes from stride 8 to stride 16.
  * final LayerNorm (eps 1e-6), mean over the tokens, a second LayerNorm (eps 1e-6), linear classifier.

``forward_features`` returns the normed map ``(B, H/16, W/16, C)`` channels-last; ``forward_intermediates`` /
``features_only`` give the chosen layers' maps as NCHW (stride 8 up to layer 8, 16 from layer 9 on).
"""
from __future__ import annotations

import re
from typing import Dict, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import DropPath, register_notrace_function, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import generate_default_cfgs, register_model

from . import scans
from ._backbone import build_family_model, check_image, imagenet_cfg
from ._checkpoint import match_state_dict, numpy_data_globals, unwrap_state_dict
from .layers import PatchEmbedNHWC, PatchMerging
from .mamba1d import MambaMixer, PlainMambaModel

__all__ = ["MambaND", "MambaNDBlock", "checkpoint_filter_fn"]

DIRECTIONS = ("h", "h_flip", "v", "v_flip")  # official: layer i scans in order i % 4
_PATTERNS: Dict[str, scans.ScanPattern] = {}


def _pattern(direction: str) -> scans.ScanPattern:
    """The single-sequence ``window`` scan pattern of ``direction`` (one instance per name: cached index maps)."""
    if direction not in _PATTERNS:
        _PATTERNS[direction] = scans.build("window", directions=[direction])
    return _PATTERNS[direction]


@register_notrace_function
def scan_tokens(x: torch.Tensor, direction: str) -> torch.Tensor:
    """``(B, H, W, C)`` map -> ``(B, H*W, C)`` tokens in the order of ``direction``."""
    return _pattern(direction).flatten(x.permute(0, 3, 1, 2))[:, 0].transpose(1, 2)


@register_notrace_function
def unscan_tokens(y: torch.Tensor, direction: str, like: torch.Tensor) -> torch.Tensor:
    """Tokens ``(B, H*W, C)`` in the order of ``direction`` -> a map shaped as ``like`` ``(B, H, W, C)``."""
    return _pattern(direction).merge(y.transpose(1, 2)[:, None], like.shape[1:3]).permute(0, 2, 3, 1)


@register_notrace_function
def pos_embed_map(pos_embed: torch.Tensor, grid: Tuple[int, int], x: torch.Tensor) -> torch.Tensor:
    """Position embedding ``(1, h*w, C)`` of ``grid`` -> ``(1, H, W, C)`` for the map ``x (B, H, W, C)``, resampled
    bicubically without antialiasing (as the official code, mmpretrain's ``resize_pos_embed``)."""
    size = list(x.shape[1:3])
    pos = resample_abs_pos_embed(pos_embed, size, list(grid), num_prefix_tokens=0, antialias=False)
    return pos.unflatten(1, size)


class MambaNDBlock(nn.Module):
    """``x = norm(x); x + drop_path(mixer(x))`` with the mixer on the tokens in one scan order, then the
    optional 2x2 patch merging; channels-last maps ``(B, H, W, C)``."""

    def __init__(self, dim: int, direction: str, drop_path: float = 0.0, norm_eps: float = 1e-5,
                 downsample: bool = False, **mixer_kwargs):
        super().__init__()
        if direction not in DIRECTIONS:
            raise ValueError(f"MambaNDBlock: direction must be one of {DIRECTIONS}, got {direction!r}")
        self.direction = direction
        self.mixer = MambaMixer(dim, **mixer_kwargs)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.downsample = PatchMerging(dim, dim) if downsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        y = unscan_tokens(self.mixer(scan_tokens(x, self.direction)), self.direction, x)
        return self.downsample(x + self.drop_path(y))

    def extra_repr(self) -> str:
        return f"direction={self.direction!r}"


class MambaND(PlainMambaModel):
    """Mamba-ND for images.

    Args:
        img_size: training image size (sets the position-embedding grid; other sizes are resampled).
        patch_size: patch conv kernel and stride.  in_chans: image channels.  num_classes: classifier outputs.
        global_pool: ``'avg'`` (official) or ``''`` (no pooling, ``forward_head`` returns the map).
        embed_dim: channels (kept through the patch merging).  depth: layers.
        directions: scan order of layer i is ``directions[i % len(directions)]``.
        downsample_layers: layers followed by a 2x2 patch merging (official: after layer 9).
        d_state, expand, d_conv, dt_rank: mixer options (official 16, 2, 4, ``ceil(dim / 16)``).
        norm_eps: eps of the layer norms (official 1e-5).  head_norm_eps: eps of the final and the pooled-feature
            norms (official 1e-6).  drop_rate: dropout before the classifier.  pos_drop_rate: dropout after the
            position embedding.  drop_path_rate: stochastic depth, linear over the layers.
        scan_backend: selective-scan backend.
    """

    pool_types = ("avg", "")
    head_modules = ("norm", "head", "fc_norm")
    # official mmengine checkpoints: 'state_dict' holds (with mmengine's EMA hook of the official config) the
    # averaged weights that the official test evaluates
    pretrained_entry = "state_dict"

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 8,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: int = 384,
            depth: int = 24,
            directions: Sequence[str] = DIRECTIONS,
            downsample_layers: Sequence[int] = (9,),
            d_state: int = 16,
            expand: float = 2,
            d_conv: int = 4,
            dt_rank: Union[int, str] = "auto",
            norm_eps: float = 1e-5,
            head_norm_eps: float = 1e-6,
            drop_rate: float = 0.0,
            pos_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            scan_backend: str = "auto",
    ):
        super().__init__(in_chans, num_classes, global_pool, embed_dim, min_input_size=1)
        bad = [i for i in downsample_layers if not 0 <= i < depth]
        if bad:
            raise ValueError(f"MambaND: downsample_layers {bad} are not layers of a depth-{depth} model")
        img_size = to_2tuple(img_size)
        self.output_fmt = "NHWC"  # forward_features' layout (timm's convention for feature-map consumers)
        self.patch_embed = PatchEmbedNHWC(in_chans, embed_dim, patch_size, norm_layer=None, pad=True)
        self.grid_size = tuple(-(-s // patch_size) for s in img_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim))
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.layers = nn.Sequential()
        self.feature_info = []
        reduction = patch_size
        for i in range(depth):
            self.layers.append(MambaNDBlock(
                embed_dim, directions[i % len(directions)], drop_path=dpr[i], norm_eps=norm_eps,
                downsample=i in downsample_layers, d_state=d_state, expand=expand, d_conv=d_conv, dt_rank=dt_rank,
                backend=scan_backend))
            reduction *= 2 if i in downsample_layers else 1
            self.feature_info.append(dict(num_chs=embed_dim, reduction=reduction, module=f"layers.{i}"))
        self.norm = nn.LayerNorm(embed_dim, eps=head_norm_eps)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=head_norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        trunc_normal_(self.pos_embed, std=0.02)
        if isinstance(self.head, nn.Linear):  # official: TruncNormal(std=2e-5) on the classifier
            trunc_normal_(self.head.weight, std=2e-5)
            nn.init.zeros_(self.head.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        matcher = super().group_matcher(coarse)
        matcher["blocks"][-1] = (r"^norm|^fc_norm", (99999,))
        return matcher

    def embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Image -> ``(B, h, w, C)`` patch map with the position embedding added."""
        check_image(x, self.in_chans, self.min_input_size, type(self).__name__)
        x = self.patch_embed(x)
        return self.pos_drop(x + pos_embed_map(self.pos_embed, self.grid_size, x)), x.shape[1:3]

    def layer_map(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> the last layer's normed ``(B, h, w, C)`` map (stride 16)."""
        return self.norm(self.forward_layers(self.embed(x)[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Normed map ``(B, h, w, C)`` -> mean over the tokens -> norm -> classifier."""
        if self.global_pool:
            x = self.fc_norm(x.mean(dim=(1, 2)))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def checkpoint_filter(self, state_dict: Dict) -> Dict[str, torch.Tensor]:
        return checkpoint_filter_fn(state_dict, self)

    def pretrained_file_globals(self) -> list:
        return numpy_data_globals()  # mmengine's logs in the official files


def _merging_order(dim: int) -> torch.Tensor:
    """Feature permutation from mmpretrain's unfold-based patch merging (feature ``c * 4 + 2 * dy + dx``) to
    :class:`vssm.layers.PatchMerging` (feature ``p * C + c`` with the 2x2 positions p in the order
    (0,0), (1,0), (0,1), (1,1))."""
    quad = torch.tensor([0, 2, 1, 3])  # unfold slot (2 * dy + dx) of our position p
    return (torch.arange(dim)[None, :] * 4 + quad[:, None]).reshape(-1)


_RULES = [
    (r"^backbone\.", ""),
    (r"^head\.fc\.", "head."),
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"\.down_sample_layer\.", ".downsample."),
    (r"^ln1\.", "norm."),
    (r"^ln2\.", "fc_norm."),
]


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: MambaND) -> Dict[str, torch.Tensor]:
    """Map an official Mamba-ND checkpoint (mmengine ``{'state_dict': sd, 'meta': ...}``, the bare mmpretrain
    classifier state dict, or its backbone without the ``backbone.`` prefix) onto ``model``: prefixes and names,
    the patch-merging features into our order, the position embedding resampled if the model's grid differs. A
    state dict already in vssm layout passes through the same key check (:class:`vssm.CheckpointMismatchError`
    names missing / unexpected / mis-shaped keys; the classifier and the patch conv's input channels are left to
    timm's adaptation)."""
    out = {}
    for k, v in unwrap_state_dict(state_dict).items():
        if ".down_sample_layer." in k:  # official (unfold-ordered) merging features
            v = v[..., _merging_order(v.shape[-1] // 4)]
        for pattern, repl in _RULES:  # official names (no-ops on vssm names)
            k = re.sub(pattern, repl, k)
        out[k] = v
    pos = out.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape and pos.shape[-1] == model.pos_embed.shape[-1]:
        side = int(round(pos.shape[1] ** 0.5))
        if side * side != pos.shape[1]:
            raise ValueError(f"Mamba-ND checkpoint pos_embed {tuple(pos.shape)} is not a square grid: build the "
                             f"model with the checkpoint's img_size")
        out["pos_embed"] = resample_abs_pos_embed(pos, list(model.grid_size), [side, side], num_prefix_tokens=0,
                                                  antialias=False)
    return match_state_dict(out, model, classifier="head", input_conv="patch_embed.proj")


# ---- configs and factories ----------------------------------------------------------------------------

def _cfg(hf_hub_filename: str, **kwargs) -> Dict:
    return imagenet_cfg(
        hf_hub_id="jacklishufan/Mamba-ND", hf_hub_filename=hf_hub_filename, custom_load="hf",
        first_conv="patch_embed.proj", classifier="head", pool_size=(14, 14), min_input_size=(3, 8, 8),
        license="unknown",  # the official repository carries no licence file
        paper_ids="arXiv:2402.05892", paper_name="Mamba-ND: Selective State Space Modeling for Multi-Dimensional Data",
        origin_url="https://github.com/jacklishufan/Mamba-ND", **kwargs)


# Official test pipeline: resize the short edge to 256 (bicubic), center crop 224 (crop_pct 0.875).
default_cfgs = generate_default_cfgs({
    "mamba2d_small.in1k": _cfg("in1k/mamba2d_s.pth", notes=(
        "official Mamba2D-S/8 (config/mamba2d.py), top-1 81.7; the repository states no licence",)),
    "mamba2d_base.in1k": _cfg("in1k/mamba2d_b.pth", notes=(
        "official Mamba2D-B/8 (config/mamba2d_b.py), top-1 83.0; the repository states no licence",)),
})


def _create_mamband(variant: str, pretrained: bool = False, **kwargs) -> MambaND:
    kwargs.setdefault("out_indices", 3)  # features_only: the last three layers
    return build_family_model(MambaND, variant, pretrained, file_custom_load=True, **kwargs)


@register_model
def mamba2d_small(pretrained: bool = False, **kwargs) -> MambaND:
    """Mamba2D-S: width 384, 24 layers, 24.5M params."""
    return _create_mamband("mamba2d_small", pretrained, **dict(dict(embed_dim=384, depth=24), **kwargs))


@register_model
def mamba2d_base(pretrained: bool = False, **kwargs) -> MambaND:
    """Mamba2D-B: width 768, 24 layers, 94.4M params."""
    return _create_mamband("mamba2d_base", pretrained, **dict(dict(embed_dim=768, depth=24), **kwargs))
