"""VSSD: vision Mamba with non-causal state space duality, as a timm model family.

Paper: "VSSD: Vision Mamba with Non-Causal State Space Duality" (Shu et al., 2024), https://arxiv.org/abs/2407.18559.
Official code and weights: https://github.com/YuHengsss/VSSD (the 2024 release, ``classification/configs/vssd``).
This is an independent implementation; ``checkpoint_filter_fn`` maps the official checkpoints onto it, giving the
official logits (float32, max abs difference < 1e-4).

Architecture (as released):
  * stem (MLLA's): 3x3/s2 conv-BN-ReLU, a residual pair of 3x3 conv-BN (ReLU between), 3x3/s2 conv-BN-ReLU to
    4x the width, 1x1 conv-BN (stride 4). Between stages MLLA's conv patch merging: 1x1 conv-ReLU to 8x the input
    width, depthwise 3x3/s2 conv-ReLU, 1x1 conv-BN to 2x.
  * block: ``x + cpe1(x)``, ``x + drop_path(mixer(norm1(x)))``, ``x + cpe2(x)``, ``x + drop_path(mlp(norm2(x)))``;
    cpe a depthwise 3x3 conv, MLP fc-GELU-fc.
  * mixer of stages 1-3 (:class:`NonCausalSSD`): in-projection to z / xBC / dt, depthwise 3x3 conv + SiLU on the
    xBC map, the non-causal SSD of :func:`vssm.kernels.ssd_noncausal` with ``dt = softplus(dt + dt_bias)`` and the
    released "positive dA" (``A = exp(A_log)``), LayerNorm of the output times z (no activation on z),
    out-projection. Options: ``ssd_form="causal"`` / ``"bidirectional"`` (the official ``LINEAR_ATTN_DUALITY:
    False`` / ``BIDIRECTION: True`` ablations, run on :func:`vssm.kernels.ssd_causal` / ``ssd_bidirectional``
    with ``A = -exp(A_log)``), ``positive_dA=False`` (the ``_na`` ablation).
  * mixer of stage 4: multi-head self-attention (the shared :class:`vssm.layers.Attention`: bias-free qkv Linear,
    proj Linear, ``F.scaled_dot_product_attention``).
  * head: LayerNorm over the stage-4 tokens, average pool, classifier.

Layout: channels-last ``(B, H, W, C)`` inside; ``forward_features`` returns the normed stage-4 tokens;
``forward_intermediates`` / ``features_only`` give NCHW maps at strides 4/8/16/32. Any input size works: every
stride-2 conv pads, so a side of n pixels gives ceil(n / 32) tokens at stride 32 (the official dense backbone's
rounding; the official classifier only takes multiples of 32, where the two agree).
"""
from __future__ import annotations

import math
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.layers import ConvNormAct, register_notrace_function
from timm.models import generate_default_cfgs, register_model

from . import kernels
from ._backbone import Stage, StagedBackbone, build_family_model, imagenet_cfg, stage_dims
from ._checkpoint import load_checkpoint_file, match_state_dict, unwrap_state_dict
from . import layers
from .layers import DropPath, Mlp, init_vssm_weights

__all__ = ["VSSD", "VSSDBlock", "NonCausalSSD", "MapAttention", "VSSDStem", "ConvPatchMerging", "run_ssd",
           "checkpoint_filter_fn"]

SSD_FORMS = ("noncausal", "causal", "bidirectional")


class VSSDStem(nn.Module):
    """Image ``(B, C, H, W)`` -> tokens ``(B, ceil(H/4), ceil(W/4), dim)`` (MLLA's convolutional stem)."""

    def __init__(self, in_chans: int = 3, dim: int = 64):
        super().__init__()
        half = dim // 2
        self.conv1 = ConvNormAct(in_chans, half, 3, stride=2, padding=1)
        self.conv2 = nn.Sequential(ConvNormAct(half, half, 3, padding=1),
                                   ConvNormAct(half, half, 3, padding=1, apply_act=False))
        self.conv3 = nn.Sequential(ConvNormAct(half, dim * 4, 3, stride=2, padding=1),
                                   ConvNormAct(dim * 4, dim, 1, apply_act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.conv2(x) + x
        return self.conv3(x).permute(0, 2, 3, 1)


class ConvPatchMerging(nn.Module):
    """MLLA's conv patch merging, ``(B, H, W, dim)`` -> ``(B, ceil(H/2), ceil(W/2), out_dim)``: 1x1 conv-ReLU to
    ``ratio * out_dim``, depthwise 3x3/s2 conv-ReLU, 1x1 conv-BN."""

    def __init__(self, dim: int, out_dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(out_dim * ratio)
        self.expand = nn.Conv2d(dim, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, stride=2, padding=1, groups=hidden)
        self.act = nn.ReLU()
        self.proj = ConvNormAct(hidden, out_dim, 1, bias=True, apply_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.dw(self.act(self.expand(x.permute(0, 3, 1, 2)))))
        return self.proj(x).permute(0, 2, 3, 1)


@register_notrace_function
def run_ssd(form: str, x, dt, A, B, C, D, dt_bias, chunk_size: int, backend: str) -> torch.Tensor:
    """The SSD form of a :class:`NonCausalSSD`; a leaf of fx traces (public name: torch.fx autowraps no ``_`` names)."""
    if form == "noncausal":
        return kernels.ssd_noncausal(x, dt, A, B, C, D, dt_bias, dt_softplus=True, backend=backend)
    fn = kernels.ssd_causal if form == "causal" else kernels.ssd_bidirectional
    return fn(x, dt, A, B, C, D, dt_bias, dt_softplus=True, chunk_size=chunk_size, backend=backend)


class NonCausalSSD(nn.Module):
    """VSSD's SSD mixer (the official ``Mamba2`` module) on ``(B, H, W, dim)`` tokens.

    Args:
        dim: token width. num_heads: SSD heads (head width ``expand * dim / num_heads``).
        expand: inner width ratio. d_state: state size N. ngroups: groups of B/C.
        d_conv: depthwise conv size on the xBC map. form: "noncausal" (released), "causal", "bidirectional".
        positive_dA: non-causal form with ``A = exp(A_log)`` (released) instead of ``-exp(A_log)``.
        chunk_size: chunk length of the causal forms. backend: SSD backend ("auto", "reference", "chunked", ...).
    """

    def __init__(self, dim: int, num_heads: int, expand: float = 2, d_state: int = 64, ngroups: int = 1,
                 d_conv: int = 3, form: str = "noncausal", positive_dA: bool = True, chunk_size: int = 256,
                 backend: str = "auto", A_init_range: Tuple[float, float] = (1, 16), dt_min: float = 0.001,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4):
        super().__init__()
        if form not in SSD_FORMS:
            raise ValueError(f"unknown SSD form {form!r}; valid: {', '.join(SSD_FORMS)}")
        d_inner = int(expand * dim)
        if d_inner % num_heads:
            raise ValueError(f"inner width {d_inner} is not divisible by num_heads {num_heads}")
        if num_heads % ngroups:
            raise ValueError(f"num_heads {num_heads} is not divisible by ngroups {ngroups}")
        self.d_inner, self.num_heads, self.head_dim = d_inner, num_heads, d_inner // num_heads
        self.d_state, self.ngroups, self.form, self.positive_dA = d_state, ngroups, form, positive_dA
        self.chunk_size, self.backend = chunk_size, backend
        conv_dim = d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(dim, d_inner + conv_dim + num_heads, bias=False)
        self.conv2d = nn.Conv2d(conv_dim, conv_dim, d_conv, padding=(d_conv - 1) // 2, groups=conv_dim)
        self.act = nn.SiLU()
        dt = torch.exp(torch.rand(num_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.empty(num_heads).uniform_(*A_init_range).log())
        self.D = nn.Parameter(torch.ones(num_heads))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True
        self.norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, dim, bias=False)

    def _heads_by_group(self, t: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """The official non-causal form gives head ``h`` group ``h % G``; the operator gives ``h // (H / G)``.
        Reorders the head dim (dim 2 of ``(b, L, H, ...)``, dim 0 of ``(H,)``) from the first to the second."""
        G, K = self.ngroups, self.num_heads // self.ngroups
        dim = 0 if t.dim() == 1 else 2
        split = (G, K) if inverse else (K, G)
        return t.unflatten(dim, split).transpose(dim, dim + 1).flatten(dim, dim + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zxbcdt = self.in_proj(x)
        z, xBC, dt = zxbcdt.split([self.d_inner, zxbcdt.shape[-1] - self.d_inner - self.num_heads, self.num_heads],
                                  dim=-1)
        xBC = self.act(self.conv2d(xBC.permute(0, 3, 1, 2))).permute(0, 2, 3, 1).flatten(1, 2)
        n = self.ngroups * self.d_state
        xs, B, C = xBC.split([self.d_inner, n, n], dim=-1)
        xs = xs.unflatten(-1, (self.num_heads, self.head_dim))
        B, C = B.unflatten(-1, (self.ngroups, self.d_state)), C.unflatten(-1, (self.ngroups, self.d_state))
        dt = dt.flatten(1, 2)
        A = self.A_log.exp() if (self.form == "noncausal" and self.positive_dA) else -self.A_log.exp()
        heads = (xs, dt, A, self.D, self.dt_bias)
        regroup = self.form == "noncausal" and self.ngroups > 1
        if regroup:
            heads = tuple(self._heads_by_group(t) for t in heads)
        xs, dt, A, D, dt_bias = heads
        y = run_ssd(self.form, xs, dt, A, B, C, D, dt_bias, self.chunk_size, self.backend)
        if regroup:
            y = self._heads_by_group(y, inverse=True)
        y = self.norm(y.flatten(2)) * z.flatten(1, 2)
        return self.out_proj(y).reshape(x.shape)


class MapAttention(layers.Attention):
    """The shared multi-head self-attention (:class:`vssm.layers.Attention`: bias-free ``qkv``, ``proj``,
    ``F.scaled_dot_product_attention``) over ``(B, H, W, dim)`` tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1, 2)).reshape(x.shape)


class VSSDBlock(nn.Module):
    """``x + cpe1(x)``, ``x + drop_path(mixer(norm1(x)))``, ``x + cpe2(x)``, ``x + drop_path(mlp(norm2(x)))``
    on ``(B, H, W, dim)``; the mixer is :class:`NonCausalSSD` or (``attention=True``) :class:`MapAttention`."""

    def __init__(self, dim: int, num_heads: int, attention: bool = False, mlp_ratio: float = 4.0,
                 drop: float = 0.0, drop_path: float = 0.0, **ssd_kwargs):
        super().__init__()
        self.cpe1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = (MapAttention(dim, num_heads, attn_drop=drop) if attention
                      else NonCausalSSD(dim, num_heads, **ssd_kwargs))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.cpe2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    @staticmethod
    def _cpe(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        return x + conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._cpe(self.cpe1, x)
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        x = self._cpe(self.cpe2, x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VSSD(StagedBackbone):
    """VSSD classifier / backbone.

    Args:
        embed_dim: stage-1 width (doubled per stage). depths, num_heads: per stage.
        attn_stages: per stage, True for self-attention blocks (released: the last stage only).
        mlp_ratio, ssd_expansion, d_state, ssd_ngroups, ssd_chunk_size: as the official config's
        ``MLP_RATIO``, ``SSD_EXPANSION``, ``D_STATE``, ``SSD_NGROUPS``, ``SSD_CHUNK_SIZE``.
        ssd_form: "noncausal" (released; ``LINEAR_ATTN_DUALITY: True``), "causal" or "bidirectional".
        positive_dA: ``SSD_POSITIVE_DA`` (released: True). ssd_backend: :mod:`vssm.kernels` SSD backend.
        drop_rate, drop_path_rate: dropout in MLP / attention and the classifier; stochastic depth (linear).
        pretrained_key: entry of an official file that ``pretrained=True`` loads (default: see ``CHECKPOINT_KEYS``).
    """

    def __init__(
            self,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = "avg",
            embed_dim: int = 64,
            depths: Sequence[int] = (2, 4, 8, 4),
            num_heads: Sequence[int] = (2, 4, 8, 16),
            attn_stages: Sequence[bool] = (False, False, False, True),
            mlp_ratio: float = 4.0,
            ssd_expansion: float = 2,
            d_state: int = 64,
            ssd_ngroups: int = 1,
            ssd_chunk_size: int = 256,
            ssd_form: str = "noncausal",
            positive_dA: bool = True,
            ssd_backend: str = "auto",
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            min_input_size: int = 1,
            pretrained_key: Optional[str] = None,
    ):
        super().__init__(in_chans, num_classes, min_input_size)
        num_stages = len(depths)
        if len(num_heads) != num_stages or len(attn_stages) != num_stages:
            raise ValueError(f"depths {list(depths)}, num_heads {list(num_heads)} and attn_stages "
                             f"{list(attn_stages)} must have the same length")
        self.pretrained_key = pretrained_key
        dims = stage_dims(embed_dim, num_stages)
        self.stem = VSSDStem(in_chans, dims[0])
        block_kwargs = dict(mlp_ratio=mlp_ratio, drop=drop_rate, expand=ssd_expansion, d_state=d_state,
                            ngroups=ssd_ngroups, chunk_size=ssd_chunk_size, form=ssd_form, positive_dA=positive_dA,
                            backend=ssd_backend)

        def make_stage(i: int, dim_in: int, dim_out: int, drop_path: List[float]) -> Stage:
            return Stage([VSSDBlock(dim_out, num_heads[i], attention=attn_stages[i], drop_path=dp, **block_kwargs)
                          for dp in drop_path], downsample=ConvPatchMerging(dim_in, dim_out) if i > 0 else None)

        self.build_stages(make_stage, dims, depths, drop_path_rate)
        self.add_head(nn.LayerNorm(dims[-1]), global_pool, drop_rate)
        self.apply(init_vssm_weights)

    def checkpoint_filter(self, state_dict: Dict) -> Dict[str, torch.Tensor]:
        return checkpoint_filter_fn(state_dict, self)


# ---- official checkpoint mapping --------------------------------------------------------------------

# official -> ours. Official: patch_embed.conv{1,2,3} (ConvLayer: conv + norm), layers.i.blocks.j.attn (SSD or
# attention), layers.i.downsample (end of stage i: conv.0/1 without norm, conv.2 with norm), norm, head.
_RULES = [
    (r"^patch_embed\.", "stem."),
    (r"^(stem\..*)\.norm\.", r"\1.bn."),
    (r"^layers\.(\d+)\.downsample\.", lambda m: f"stages.{int(m.group(1)) + 1}.downsample."),
    (r"\.downsample\.conv\.0\.conv\.", ".downsample.expand."),
    (r"\.downsample\.conv\.1\.conv\.", ".downsample.dw."),
    (r"\.downsample\.conv\.2\.conv\.", ".downsample.proj.conv."),
    (r"\.downsample\.conv\.2\.norm\.", ".downsample.proj.bn."),
    (r"^layers\.(\d+)\.blocks\.", r"stages.\1.blocks."),
    (r"\.attn\.to_qkv\.", ".mixer.qkv."),
    (r"\.attn\.to_out\.", ".mixer.proj."),
    (r"\.attn\.", ".mixer."),
    (r"^head\.", "head.fc."),
]
# the official dense backbone (Backbone_VMAMBA2) adds outnorm{i}; VSSMBackbone takes them before this filter
_DROP = [r"^outnorm\d+\."]


def _official_entry(state_dict: Mapping, model: VSSD) -> Mapping:
    """The entry of an official file that ``model`` takes: ``model.pretrained_key``, else ``'model'`` for the tags
    in ``CHECKPOINT_KEYS``, else ``'model_ema'``. timm's file loader hands over ``'model_ema'`` whenever a file has
    one; for a model that wants another entry the file named in its pretrained cfg is read again for it."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    key = model.pretrained_key or CHECKPOINT_KEYS.get(f"{cfg.get('architecture')}.{cfg.get('tag')}", "model_ema")
    if isinstance(state_dict.get(key), Mapping):  # a whole training checkpoint
        return state_dict[key]
    if key == "model_ema" or not cfg.get("file") or any(isinstance(v, Mapping) for v in state_dict.values()):
        return state_dict
    checkpoint = load_checkpoint_file(cfg["file"])
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get(key), Mapping):
        return state_dict  # a bare state dict: nothing else to take
    return checkpoint[key]


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: VSSD) -> Dict[str, torch.Tensor]:
    """Map an official VSSD checkpoint (``{'model': sd, 'model_ema': sd, 'config': ...}`` as the official training
    code saves it, or one state dict) onto ``model``, taking the entry :func:`_official_entry` names; a state dict
    already in vssm layout passes through the same key check (``outnorm{i}`` of the official dense backbone are
    dropped: VSSMBackbone takes them into its output norms). Raises
    :class:`vssm.CheckpointMismatchError` naming missing / unexpected / mis-shaped keys (the classifier ``head.fc``
    is exempt; so is the input-channel dim of the first stem conv)."""
    sd = unwrap_state_dict(_official_entry(state_dict, model))
    rules = [] if any(k.startswith("stem.") for k in sd) else _RULES
    renamed = {}
    for k, v in sd.items():
        if any(re.search(d, k) for d in _DROP):
            continue
        for pattern, repl in rules:
            k = re.sub(pattern, repl, k)
        renamed[k] = v
    return match_state_dict(renamed, model, classifier="head.fc", input_conv="stem.conv1.conv")


# ---- configs and factories ----------------------------------------------------------------------------

def _cfg(**kwargs) -> Dict:
    return imagenet_cfg(
        first_conv="stem.conv1.conv", license="apache-2.0", paper_ids="arXiv:2407.18559",
        paper_name="VSSD: Vision Mamba with Non-Causal State Space Duality",
        origin_url="https://github.com/YuHengsss/VSSD", hf_hub_id="YuhengSSS/VSSD", min_input_size=(3, 1, 1),
        **kwargs)


# Official checkpoints are NOT downloaded (url is empty): fetch the file named in hf_hub_filename from the
# Hugging Face repo YuhengSSS/VSSD and load it with pretrained=True, pretrained_cfg_overlay=dict(file=PATH).
# Each file holds 'model' and 'model_ema' (and a yacs config). 'vssd_micro_best.pth' is the official 'best_ckpt'
# (saved when the non-EMA accuracy peaked: the published accuracy is 'model''s); the '*_best_ema.pth' files are
# 'best_ckpt_ema' (saved when the EMA accuracy peaked: 'model_ema''s). The MESA files were renamed on release and
# their logs were not reachable here; they load 'model_ema' (MESA's teacher, what timm takes by default).
# CHECKPOINT_KEYS lists the tags that take 'model' (see checkpoint_filter_fn); pretrained_key= overrides it.
CHECKPOINT_KEYS = {"vssd_micro.in1k": "model"}
default_cfgs = generate_default_cfgs({
    "vssd_micro.in1k": _cfg(hf_hub_filename="vssd_micro_best.pth",
                            notes=("official VSSD-Micro, top-1 82.5, 14M params, 2.3G FLOPs",)),
    "vssd_tiny.in1k": _cfg(hf_hub_filename="vssd_tiny_best_ema.pth",
                           notes=("official VSSD-Tiny (EMA), top-1 83.6, 24M params, 4.5G FLOPs",)),
    "vssd_tiny.in1k_mesa": _cfg(hf_hub_filename="vssd_tiny_e300_with_mesa.pth",
                                notes=("official VSSD-Tiny trained with MESA, top-1 84.1",)),
    "vssd_small.in1k": _cfg(hf_hub_filename="vssd_small_best_ema.pth",
                            notes=("official VSSD-Small (EMA), top-1 84.1, 40M params, 7.4G FLOPs",)),
    "vssd_small.in1k_mesa": _cfg(hf_hub_filename="vssd_small_e300_with_mesa.pth",
                                 notes=("official VSSD-Small trained with MESA, top-1 84.5",)),
    "vssd_base.in1k": _cfg(hf_hub_filename="vssd_base_best_ema.pth",
                           notes=("official VSSD-Base (EMA), top-1 84.7, 89M params, 16.1G FLOPs",)),
    "vssd_base.in1k_mesa": _cfg(hf_hub_filename="vssd_base_e300_with_mesa.pth",
                                notes=("official VSSD-Base trained with MESA, top-1 85.4",)),
})


def _create_vssd(variant: str, pretrained: bool = False, **kwargs) -> VSSD:
    return build_family_model(VSSD, variant, pretrained, **kwargs)


@register_model
def vssd_micro(pretrained: bool = False, **kwargs) -> VSSD:
    """VSSD-Micro: 13.5M params, 2.3G FLOPs, 82.5 top-1."""
    args = dict(embed_dim=48, depths=(2, 2, 8, 4), num_heads=(2, 4, 8, 16), d_state=48)
    return _create_vssd("vssd_micro", pretrained, **dict(args, **kwargs))


@register_model
def vssd_tiny(pretrained: bool = False, **kwargs) -> VSSD:
    """VSSD-Tiny: 24.3M params, 4.5G FLOPs, 83.6 top-1 (84.1 with MESA)."""
    args = dict(embed_dim=64, depths=(2, 4, 8, 4), num_heads=(2, 4, 8, 16))
    return _create_vssd("vssd_tiny", pretrained, **dict(args, **kwargs))


@register_model
def vssd_small(pretrained: bool = False, **kwargs) -> VSSD:
    """VSSD-Small: 40.0M params, 7.4G FLOPs, 84.1 top-1 (84.5 with MESA)."""
    args = dict(embed_dim=64, depths=(3, 4, 21, 5), num_heads=(2, 4, 8, 16))
    return _create_vssd("vssd_small", pretrained, **dict(args, **kwargs))


@register_model
def vssd_base(pretrained: bool = False, **kwargs) -> VSSD:
    """VSSD-Base: 89M params, 16.1G FLOPs, 84.7 top-1 (85.4 with MESA)."""
    args = dict(embed_dim=96, depths=(3, 4, 21, 5), num_heads=(3, 6, 12, 24))
    return _create_vssd("vssd_base", pretrained, **dict(args, **kwargs))
