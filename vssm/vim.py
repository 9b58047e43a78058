"""Vim (Vision Mamba): a plain bidirectional-Mamba backbone, as a timm model family.

Paper: "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model" (Zhu et al.,
ICML 2024), https://arxiv.org/abs/2401.09417. Official code and weights: https://github.com/hustvl/Vim (Apache-2.0).
This is an independent implementation; ``checkpoint_filter_fn`` maps the official checkpoints onto it, giving the
official logits (float32, max abs difference < 1e-4).

Architecture (the released ``*_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2`` models):
  * 16x16 patch conv (stride 16, or 8 for the fine-tuned ``+`` models), no padding: ``(H - 16) // s + 1`` rows.
  * a class token inserted in the MIDDLE of the patch sequence (at ``N // 2``), a learned absolute position
    embedding over the N + 1 tokens (resampled bicubically for other grids; the official code asserts 224).
  * 24 blocks ``x + drop_path(mixer(rmsnorm(x)))`` on a float32 residual stream: this is the official fused
    add + RMSNorm fast path (its non-fused fallback drops the backward direction, so the fused path is the
    reference). The mixer is :class:`vssm.mamba1d.MambaMixer` with ``bidirectional=True``: forward and
    reversed scans (each with its own conv1d / projections / A / D, one grouped scan call), ``(y_f + y_b) / 2``
    gated by ``silu(z)`` before the out-projection.
  * final RMSNorm, classifier on the middle (class) token.

``forward_features`` returns the normed tokens ``(B, N + 1, C)`` (class token at ``N // 2``);
``forward_intermediates`` / ``features_only`` give the chosen blocks' patch tokens as NCHW maps.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import (DropPath, RmsNormFp32, lecun_normal_, register_notrace_function, resample_abs_pos_embed,
                         to_2tuple, trunc_normal_)
from timm.models import generate_default_cfgs, register_model

from ._backbone import build_family_model, check_image, imagenet_cfg
from ._checkpoint import match_state_dict, unwrap_state_dict
from .layers import PatchEmbedNHWC
from .mamba1d import MambaMixer, PlainMambaModel

__all__ = ["Vim", "VimBlock", "checkpoint_filter_fn"]


@register_notrace_function
def insert_middle_token(x: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """``(B, N, C)`` and a ``(1, 1, C)`` token -> ``(B, N + 1, C)`` with the token at ``N // 2``."""
    m = x.shape[1] // 2
    return torch.cat([x[:, :m], token.expand(x.shape[0], -1, -1).to(x.dtype), x[:, m:]], dim=1)


@register_notrace_function
def split_middle_token(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(B, N + 1, C)`` -> the middle token ``(B, C)`` and the other N tokens ``(B, N, C)`` in order."""
    m = (x.shape[1] - 1) // 2
    return x[:, m], torch.cat([x[:, :m], x[:, m + 1:]], dim=1)


@register_notrace_function
def resample_middle_pos_embed(pos_embed: torch.Tensor, old_grid: Tuple[int, int],
                              new_grid: Tuple[int, int]) -> torch.Tensor:
    """Position embedding ``(1, h*w + 1, C)`` with the class slot in the middle -> the same layout for
    ``new_grid``: the patch part is resampled like timm's ViTs (bicubic), the class slot moves to the new middle."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    cls_pos, patch_pos = split_middle_token(pos_embed)
    patch_pos = resample_abs_pos_embed(patch_pos, list(new_grid), list(old_grid), num_prefix_tokens=0)
    return insert_middle_token(patch_pos, cls_pos[:, None])


class VimBlock(nn.Module):
    """``x + drop_path(mixer(norm(x)))``: the official fused add + RMSNorm, with x the float32 residual stream
    and the norm computed in float32 (its output in the weights' dtype)."""

    def __init__(self, dim: int, drop_path: float = 0.0, norm_eps: float = 1e-5, **mixer_kwargs):
        super().__init__()
        self.mixer = MambaMixer(dim, bidirectional=True, **mixer_kwargs)
        self.norm = RmsNormFp32(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.mixer(self.norm(x).to(self.norm.weight.dtype)))


class Vim(PlainMambaModel):
    """Vision Mamba.

    Args:
        img_size: training image size (sets the position-embedding grid; other sizes are resampled).
        patch_size: patch conv kernel.  stride: patch conv stride (default ``patch_size``).
        in_chans: image channels.  num_classes: classifier outputs (0: none).
        global_pool: ``'token'`` (official: the middle class token), ``'avg'`` (mean of the patch tokens) or ``''``.
        embed_dim: token channels.  depth: blocks.  d_state, expand, d_conv, dt_rank: mixer options (official
            16, 2, 4, ``ceil(dim / 16)``).  divide_out: halve the two directions' sum (official ``div2``: True).
        norm_eps: RMSNorm eps.  drop_rate: dropout before the classifier.  pos_drop_rate: dropout after the
            position embedding.  drop_path_rate: stochastic depth, linear over the blocks.
        scan_backend: selective-scan backend.
    """

    pool_types = ("token", "avg", "")
    # official files hold 'model' (the published accuracy: the official training keeps its best checkpoint by
    # the accuracy of 'model'), 'model_ema', the optimizer and the training args; timm's own loader would take
    # 'model_ema'. The pretrained cfgs and pretrained_cfg_overlay=dict(file=...) send files to load_pretrained.
    pretrained_entry = "model"

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: int = 16,
            stride: Optional[int] = None,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "token",
            embed_dim: int = 192,
            depth: int = 24,
            d_state: int = 16,
            expand: float = 2,
            d_conv: int = 4,
            dt_rank: Union[int, str] = "auto",
            divide_out: bool = True,
            norm_eps: float = 1e-5,
            drop_rate: float = 0.0,
            pos_drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            scan_backend: str = "auto",
    ):
        super().__init__(in_chans, num_classes, global_pool, embed_dim, min_input_size=patch_size)
        stride = stride or patch_size
        img_size = to_2tuple(img_size)
        if min(img_size) < patch_size:
            raise ValueError(f"Vim: img_size {img_size} is smaller than the patch size {patch_size}")
        self.num_prefix_tokens = 1
        self.patch_embed = PatchEmbedNHWC(in_chans, embed_dim, patch_size, norm_layer=None, stride=stride)
        self.grid_size = tuple((s - patch_size) // stride + 1 for s in img_size)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))  # class slot at num_patches // 2
        self.cls_token._no_weight_decay = self.pos_embed._no_weight_decay = True
        self.pos_drop = nn.Dropout(pos_drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.layers = nn.Sequential(*[
            VimBlock(embed_dim, drop_path=dpr[i], norm_eps=norm_eps, d_state=d_state, expand=expand, d_conv=d_conv,
                     dt_rank=dt_rank, divide_out=divide_out, backend=scan_backend)
            for i in range(depth)
        ])
        self.norm = RmsNormFp32(embed_dim, eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=embed_dim, reduction=stride, module=f"layers.{i}") for i in range(depth)]
        self._init_weights(depth)

    def _init_weights(self, depth: int) -> None:
        """Official init: patch conv LeCun-normal, head trunc-normal(0.02), position / class token
        trunc-normal(0.02), Linear biases zero (not dt_proj's), out_proj kaiming-uniform / sqrt(depth)."""
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for block in self.layers:
            for m in block.modules():
                if isinstance(m, nn.Linear) and m.bias is not None and not getattr(m.bias, "_no_reinit", False):
                    nn.init.zeros_(m.bias)
            nn.init.kaiming_uniform_(block.mixer.out_proj.weight, a=5 ** 0.5)
            with torch.no_grad():
                block.mixer.out_proj.weight /= depth ** 0.5

    def embed(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Image -> ``(B, N + 1, C)`` float32 tokens (class token in the middle, position embedding added)."""
        check_image(x, self.in_chans, self.min_input_size, type(self).__name__)
        x = self.patch_embed(x)  # (B, h, w, C)
        grid = x.shape[1:3]
        x = insert_middle_token(x.flatten(1, 2), self.cls_token)
        x = x + resample_middle_pos_embed(self.pos_embed, self.grid_size, grid)
        return self.pos_drop(x).float(), grid

    def layer_map(self, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """``(B, h*w + 1, C)`` tokens -> the patch tokens as a ``(B, C, h, w)`` map."""
        patches = split_middle_token(x)[1]
        return patches.unflatten(1, tuple(grid)).permute(0, 3, 1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> the last layer's normed ``(B, N + 1, C)`` tokens (class token in the middle)."""
        return self.norm(self.forward_layers(self.embed(x)[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Normed tokens ``(B, N + 1, C)`` -> logits (``pre_logits``: the pooled feature ``(B, C)``)."""
        if self.global_pool:
            cls, patches = split_middle_token(x)
            x = cls if self.global_pool == "token" else patches.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def checkpoint_filter(self, state_dict: Dict) -> Dict[str, torch.Tensor]:
        return checkpoint_filter_fn(state_dict, self)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: Vim) -> Dict[str, torch.Tensor]:
    """Map an official Vim checkpoint (the state dict, or the training file ``{'model': sd, 'model_ema': ...}``:
    ``'model'`` is taken) onto ``model``: ``norm_f`` becomes ``norm``, the position embedding is resampled if the
    model's grid differs. Raises :class:`vssm.CheckpointMismatchError` naming missing / unexpected / mis-shaped
    keys (the classifier and the patch conv's input channels are left to timm's adaptation)."""
    sd = unwrap_state_dict(state_dict)
    sd = {("norm." + k[len("norm_f."):] if k.startswith("norm_f.") else k): v for k, v in sd.items()}
    pos = sd.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape and pos.shape[-1] == model.pos_embed.shape[-1]:
        side = int(round((pos.shape[1] - 1) ** 0.5))
        if side * side != pos.shape[1] - 1:
            raise ValueError(f"Vim checkpoint pos_embed {tuple(pos.shape)} is not a square grid plus a class token")
        sd["pos_embed"] = resample_middle_pos_embed(pos, (side, side), model.grid_size)
    return match_state_dict(sd, model, classifier="head", input_conv="patch_embed.proj")


# ---- configs and factories ----------------------------------------------------------------------------

def _cfg(hf_hub_id: str, hf_hub_filename: str, **kwargs) -> Dict:
    return imagenet_cfg(
        hf_hub_id=hf_hub_id, hf_hub_filename=hf_hub_filename, custom_load="hf",
        first_conv="patch_embed.proj", classifier="head", license="apache-2.0", paper_ids="arXiv:2401.09417",
        paper_name="Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model",
        origin_url="https://github.com/hustvl/Vim", crop_pct=0.875, pool_size=None, min_input_size=(3, 16, 16),
        **kwargs)


# The official files (Hugging Face hf_hub_id / hf_hub_filename) hold 'model' (the published accuracy),
# 'model_ema', the optimizer and the training args; load_pretrained takes 'model' (Vim.pretrained_entry).
default_cfgs = generate_default_cfgs({
    "vim_tiny.in1k": _cfg("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth",
                          notes=("official Vim-tiny, top-1 76.1",)),
    "vim_tiny_stride8.in1k": _cfg("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_ft_78p3acc.pth",
                                  notes=("official Vim-tiny+ (stride 8 fine-tuned), top-1 78.3",)),
    "vim_small.in1k": _cfg("hustvl/Vim-small-midclstok", "vim_s_midclstok_80p5acc.pth",
                           notes=("official Vim-small, top-1 80.5",)),
    "vim_small_stride8.in1k": _cfg("hustvl/Vim-small-midclstok", "vim_s_midclstok_ft_81p6acc.pth",
                                   notes=("official Vim-small+ (stride 8 fine-tuned), top-1 81.6",)),
    "vim_base.in1k": _cfg("hustvl/Vim-base-midclstok", "vim_b_midclstok_81p9acc.pth",
                          notes=("official Vim-base, top-1 81.9",)),
})


def _create_vim(variant: str, pretrained: bool = False, **kwargs) -> Vim:
    kwargs.setdefault("out_indices", 3)  # features_only: the last three layers
    return build_family_model(Vim, variant, pretrained, file_custom_load=True, **kwargs)


@register_model
def vim_tiny(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-tiny: 7.1M params, 76.1 top-1 (official ``vim_tiny_patch16_224_bimambav2_..._midclstok_div2``)."""
    return _create_vim("vim_tiny", pretrained, **dict(dict(embed_dim=192, depth=24), **kwargs))


@register_model
def vim_tiny_stride8(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-tiny+: the tiny model with stride-8 patches (729 tokens at 224), 78.3 top-1."""
    return _create_vim("vim_tiny_stride8", pretrained, **dict(dict(embed_dim=192, depth=24, stride=8), **kwargs))


@register_model
def vim_small(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-small: 25.8M params, 80.5 top-1."""
    return _create_vim("vim_small", pretrained, **dict(dict(embed_dim=384, depth=24), **kwargs))


@register_model
def vim_small_stride8(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-small+: the small model with stride-8 patches, 81.6 top-1."""
    return _create_vim("vim_small_stride8", pretrained, **dict(dict(embed_dim=384, depth=24, stride=8), **kwargs))


@register_model
def vim_base(pretrained: bool = False, **kwargs) -> Vim:
    """Vim-base: 97.6M params, 81.9 top-1 (official ``..._with_middle_cls_token_div2``)."""
    return _create_vim("vim_base", pretrained, **dict(dict(embed_dim=768, depth=24), **kwargs))
