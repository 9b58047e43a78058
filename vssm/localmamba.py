"""LocalMamba (LocalVMamba): VMamba with windowed scans and searched directions per block, as timm models.

Paper: "LocalMamba: Visual State Space Model with Windowed Selective Scan" (Huang et al., 2024),
https://arxiv.org/abs/2403.09338. Official code and weights: https://github.com/hunto/LocalMamba (Apache-2.0).
This is an independent implementation on the shared vssm parts; ``checkpoint_filter_fn`` maps the official
checkpoints (``local_vssm_tiny`` / ``local_vssm_small`` layout) onto it, giving the official logits
(float32, max abs difference < 1e-4).

Architecture (hierarchical, like the v0 VMamba): 4x4 patch stem, patch-merging downsample, blocks
``x + drop_path(mixer(norm(x)))`` without an MLP. The mixer is a gated SS2D (d_state 16, ssm_ratio 2) whose
K = 4 scan directions are chosen per block from

    h, h_flip        row-major order and its reverse
    v, v_flip        column-major order and its reverse
    w2, w2_flip      2x2 windows (row-major over windows and inside each window) and its reverse
    w7, w7_flip      7x7 windows, likewise

(the ``window`` scan pattern of :mod:`vssm.scans`). The release models use the directions found by the paper's
search, shipped as data in ``vssm/data/localmamba_directions.json``. The K outputs are not simply summed: each
direction's output, put back in image order, is scaled by a channel gate computed from that output
(LayerNorm -> mean over tokens -> Linear -> GELU -> Linear -> sigmoid, one gate module shared by the K
directions; the official ``BiAttn``), and the gated maps are summed.

Window padding: a map whose sides are not multiples of the window is zero-padded at the bottom/right for the
window directions, and the pad tokens stay in the sequence (their zero input still decays the state), as in
the official code. At 224x224 this only happens in the last stage (7x7 map): ``w2`` / ``w2_flip`` scan an 8x8
grid there (the tiny model's first last-stage block uses ``w2_flip``; the small model's last stage has no ``w2``). At
other sizes (e.g. 256: maps 64/32/16/8) the ``w7`` directions pad in every stage.

Non-square maps: the official code puts the ``v`` / ``v_flip`` outputs back with a permutation that is the
inverse of the column-major scan only for square maps. ``official_v_merge=True`` (default) reproduces that
permutation, so official weights give the official outputs at any size (the official detection and
segmentation backbones ran through it); ``official_v_merge=False`` uses the exact inverse (same results on
square maps).
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.models import generate_default_cfgs, register_model

from ._backbone import build_family_model, imagenet_cfg, release_file
from ._checkpoint import unwrap_state_dict
from .layers import SS2D
from .scans.base import traced_constants
from .vmamba import VMamba
from .vmamba import checkpoint_filter_fn as _vmamba_checkpoint_filter_fn

__all__ = [
    "LocalVMamba", "LocalSS2D", "DirectionGate", "LOCALMAMBA_DIRECTIONS", "searched_directions",
    "resolve_directions", "checkpoint_filter_fn",
]

# The scan directions LocalMamba chooses from (the official search space).
LOCALMAMBA_DIRECTIONS = ("h", "h_flip", "v", "v_flip", "w2", "w2_flip", "w7", "w7_flip")

_DIRECTIONS_FILE = "localmamba_directions.json"

DirectionSpec = Union[str, Sequence[str], Sequence[Sequence[str]]]


def searched_directions(name: Optional[str] = None) -> Union[List[List[str]], List[str]]:
    """The searched directions of a release model (one list of names per block, blocks in order over all
    stages), e.g. ``searched_directions('local_vmamba_tiny')``; without a name, the available names."""
    text = resources.files(__package__).joinpath("data", _DIRECTIONS_FILE).read_text()
    table = {k: v for k, v in json.loads(text).items() if isinstance(v, list)}
    if name is None:
        return sorted(table)
    if name not in table:
        raise KeyError(f"no searched LocalMamba directions named {name!r}; available: {', '.join(sorted(table))}")
    return [list(block) for block in table[name]]


def _check_names(names: Sequence[str], where: str) -> Tuple[str, ...]:
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise TypeError(f"{where}: expected a list of direction names, got {names!r}")
    if len(names) == 0:
        raise ValueError(f"{where}: empty direction list; choose from {', '.join(LOCALMAMBA_DIRECTIONS)}")
    for name in names:
        if name not in LOCALMAMBA_DIRECTIONS:
            raise ValueError(f"unknown LocalMamba scan direction {name!r} ({where}); valid directions: "
                             f"{', '.join(LOCALMAMBA_DIRECTIONS)}")
    return tuple(names)


def resolve_directions(directions: DirectionSpec, depths: Sequence[int]) -> List[Tuple[str, ...]]:
    """Per-block direction tuples for a model with ``depths``.

    ``directions`` may be the name of a searched set (``'local_vmamba_tiny'``, ``'local_vmamba_small'``), one
    list of names used by every block (``['h', 'v', 'w7', 'w7_flip']``), or one list per block (``sum(depths)``
    lists, blocks in order over all stages). Unknown names raise ``ValueError`` listing the valid ones.
    """
    num_blocks = sum(depths)
    if isinstance(directions, str):
        source = f"searched directions {directions!r}"
        directions = searched_directions(directions)
    else:
        source = "directions"
    if not isinstance(directions, Sequence) or len(directions) == 0:
        raise TypeError(f"directions must be a searched-set name, a list of direction names or a list of such "
                        f"lists (one per block); got {directions!r}")
    if all(isinstance(d, str) for d in directions):
        block = _check_names(directions, "all blocks")
        return [block] * num_blocks
    if len(directions) != num_blocks:
        raise ValueError(f"{source} lists {len(directions)} blocks but depths {tuple(depths)} have {num_blocks}")
    return [_check_names(d, f"block {i}") for i, d in enumerate(directions)]


class DirectionGate(nn.Module):
    """Channel gate per scan direction, then the sum over directions (the official ``BiAttn`` fusion).

    Input ``(B, K, C, N)``: the K directions' outputs in image order (N tokens). For each direction k:
    ``a_k = sigmoid(expand(act(reduce(mean_N(norm(y_k))))))`` (one value per channel) and the output is
    ``sum_k y_k * a_k`` with shape ``(B, C, N)``. The module's weights are shared by the K directions.
    """

    def __init__(self, channels: int, ratio: float = 0.125, act_layer=nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        hidden = int(channels * ratio)
        self.norm = norm_layer(channels)
        self.global_reduce = nn.Linear(channels, hidden)
        self.act = act_layer()
        self.channel_select = nn.Linear(hidden, channels)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        context = self.norm(y.transpose(2, 3)).mean(dim=2)  # (B, K, C)
        weight = torch.sigmoid(self.channel_select(self.act(self.global_reduce(context))))
        return (y * weight.unsqueeze(-1)).sum(dim=1)


@lru_cache(maxsize=256)
def _official_v_order(directions: Tuple[str, ...], H: int, W: int, device: torch.device) -> torch.Tensor:
    """``(K, H*W)`` gather index from the exact per-direction maps to the official placement: the official code
    puts the t-th output of the column-major scan (``t = i*W + j``) at flat position ``j*H + i``, the inverse of
    that scan only when H == W; ``v_flip`` likewise on the reversed order. Identity for the other directions.
    Shapes never depend on values, so torch.compile traces it without graph breaks (but, the cache being skipped
    by dynamo, rebuilds it in every compiled call on such a map)."""
    q = torch.arange(H * W)
    slot = (q % H) * W + q // H  # the slot the official code puts at position q
    exact = (slot % H) * W + slot // H  # where the exact map holds that slot's output
    order = q.repeat(len(directions), 1)
    for k, name in enumerate(directions):
        if name in ("v", "v_flip"):
            order[k] = exact
    return order.to(device)


class LocalSS2D(SS2D):
    """SS2D over the ``window`` scan pattern with the given directions, fused by a :class:`DirectionGate`.

    Args:
        dim: model channels.  directions: the K direction names (see :data:`LOCALMAMBA_DIRECTIONS`).
        gate_ratio: hidden width of the gate as a fraction of the inner channels (official 0.125).
        official_v_merge: put ``v`` / ``v_flip`` outputs back as the official code does (differs from the exact
            inverse only on non-square maps; see the module docstring).
        **kwargs: :class:`vssm.layers.SS2D` options (d_state, ssm_ratio, gate, norm_layer, ...).
    """

    def __init__(self, dim: int, directions: Sequence[str], gate_ratio: float = 0.125,
                 official_v_merge: bool = True, scan: str = "window", **kwargs):
        if scan != "window":
            raise ValueError(f"LocalSS2D scans its directions with the 'window' pattern, got scan={scan!r}")
        directions = _check_names(directions, "LocalSS2D")
        super().__init__(dim, scan="window", scan_options=dict(directions=list(directions)), **kwargs)
        self.directions = directions
        self.official_v_merge = official_v_merge
        self.direction_gate = DirectionGate(self.d_inner, gate_ratio,
                                            norm_layer=kwargs.get("norm_layer", nn.LayerNorm))

    def scan_sequences(self, x: torch.Tensor, dts: torch.Tensor, Bs: torch.Tensor, Cs: torch.Tensor) -> torch.Tensor:
        """One fused :func:`vssm.kernels.scan2d` that keeps the K outputs apart (``per_sequence``: the gate weighs
        them), each in image order; with ``official_v_merge`` the ``v`` maps of a non-square map are then
        reordered the official way. ``(B, d_inner, H, W)`` in x's dtype."""
        batch, channels, H, W = x.shape
        maps = self.fused_scan(x, dts, Bs, Cs, per_sequence=True).flatten(3)  # (B, K, d_seq, H*W)
        if self.official_v_merge and H != W and any(name in ("v", "v_flip") for name in self.directions):
            with traced_constants():
                order = _official_v_order(self.directions, int(H), int(W), x.device)
            maps = maps.gather(3, order[None, :, None, :].expand(maps.shape))
        return self.direction_gate(maps).view(batch, channels, H, W)

    def extra_repr(self) -> str:
        return f"directions={list(self.directions)}"


class LocalVMamba(VMamba):
    """LocalVMamba backbone + classifier: the v0 VMamba (patch stem, patch merging, gated SS2D without MLP, final
    norm, head, timm API) with a :class:`LocalSS2D` mixer of its own directions in every block.

    Args:
        directions: per-block scan directions: a searched-set name, one list for all blocks, or one list per
            block (see :func:`resolve_directions`).
        depths, dims: blocks and channels per stage (dims int ``d``: ``(d, 2d, 4d, 8d)``).
        d_state, ssm_ratio, dt_rank, ssm_conv, ssm_conv_bias: SS2D options (official 16, 2.0, auto, 3, True).
        gate_ratio: direction-gate hidden ratio (0.125).  official_v_merge: see :class:`LocalSS2D`.
        Other args as :class:`vssm.vmamba.VMamba`.
    """

    def __init__(
            self,
            directions: DirectionSpec = "local_vmamba_tiny",
            depths: Sequence[int] = (2, 2, 9, 2),
            d_state: int = 16,
            ssm_ratio: float = 2.0,
            ssm_conv_bias: bool = True,
            gate_ratio: float = 0.125,
            official_v_merge: bool = True,
            **kwargs,
    ):
        block_directions = resolve_directions(directions, depths)
        per_block = [dict(directions=d, gate_ratio=gate_ratio, official_v_merge=official_v_merge)
                     for d in block_directions]
        super().__init__(depths=depths, stem="patch", downsample="merge", d_state=d_state, ssm_ratio=ssm_ratio,
                         ssm_conv_bias=ssm_conv_bias, gate=True, scan="window", mlp_ratio=0.0, mixer_layer=LocalSS2D,
                         block_mixer_kwargs=per_block, **kwargs)
        self.directions = block_directions

    def checkpoint_filter(self, state_dict: Dict) -> Dict[str, torch.Tensor]:
        return checkpoint_filter_fn(state_dict, self)


# ---- official checkpoint mapping --------------------------------------------------------------------

def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: LocalVMamba) -> Dict[str, torch.Tensor]:
    """Map an official LocalMamba checkpoint (``{'model': sd}``, ``{'state_dict': sd}`` or ``sd``; layout of
    ``local_vssm_tiny`` / ``local_vssm_small``) or a vssm-layout state dict onto ``model``.

    The official layout is the v0 VMamba one plus ``op.multi_scan.attn`` (the direction gate). Raises
    :class:`vssm.CheckpointMismatchError` naming missing / unexpected / mis-shaped keys.
    """
    sd = {k.replace(".op.multi_scan.attn.", ".op.direction_gate."): v
          for k, v in unwrap_state_dict(state_dict).items()}
    return _vmamba_checkpoint_filter_fn(sd, model)


# ---- configs and factories ----------------------------------------------------------------------------

_RELEASE = "https://github.com/hunto/LocalMamba/releases/download/v1.0.0"


def _cfg(**kwargs) -> Dict:
    return imagenet_cfg(first_conv="stem.proj", license="apache-2.0", paper_ids="arXiv:2403.09338",
                        paper_name="LocalMamba: Visual State Space Model with Windowed Selective Scan", **kwargs)


# The released model: pretrained=True downloads the official release file (or finds it in timm's torch.hub cache).
default_cfgs = generate_default_cfgs({
    "local_vmamba_tiny.in1k": _cfg(
        notes=("official local_vssm_tiny, top-1 82.7; its checkpoint is not released (the official README lists "
               "it as 'retraining'); an official-format file loads with pretrained_cfg_overlay=dict(file=PATH)",),
    ),
    "local_vmamba_small.in1k": _cfg(
        **release_file(f"{_RELEASE}/local_vssm_small.ckpt"),
        notes=("official file local_vssm_small.ckpt (local_vssm_small), top-1 83.7",),
    ),
})


def _create_local_vmamba(variant: str, pretrained: bool = False, **kwargs) -> LocalVMamba:
    return build_family_model(LocalVMamba, variant, pretrained, **kwargs)


@register_model
def local_vmamba_tiny(pretrained: bool = False, **kwargs) -> LocalVMamba:
    """LocalVMamba-T (official ``local_vssm_tiny``): 25.5M params, 5.7G FLOPs, 82.7 top-1."""
    args = dict(depths=(2, 2, 9, 2), dims=96, directions="local_vmamba_tiny")
    return _create_local_vmamba("local_vmamba_tiny", pretrained, **dict(args, **kwargs))


@register_model
def local_vmamba_small(pretrained: bool = False, **kwargs) -> LocalVMamba:
    """LocalVMamba-S (official ``local_vssm_small``): 49.7M params, 11.4G FLOPs, 83.7 top-1."""
    args = dict(depths=(2, 2, 27, 2), dims=96, directions="local_vmamba_small")
    return _create_local_vmamba("local_vmamba_small", pretrained, **dict(args, **kwargs))
