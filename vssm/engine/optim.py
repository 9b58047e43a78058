"""AdamW with the papers' weight-decay exclusions, and timm's cosine schedule with warmup."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Set, Tuple

import torch
from torch import nn

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)
if hasattr(nn, "RMSNorm"):
    _NORM_TYPES = _NORM_TYPES + (nn.RMSNorm,)


def _model_no_wd_names(model: nn.Module) -> Set[str]:
    names: Set[str] = set()
    for attr in ("no_weight_decay", "no_weight_decay_keywords"):
        fn = getattr(model, attr, None)
        if callable(fn):
            names |= set(fn())
    return names


def split_weight_decay(model: nn.Module, no_wd_keys: Iterable[str]) -> Tuple[List[str], List[str]]:
    """Names of parameters (decay, no_decay).

    No decay for: 1-D tensors (norm scales, biases, Ds, ...), anything ending in ``.bias``, parameters of
    normalisation layers, names containing one of ``no_wd_keys`` (A_logs, Ds, dt_projs_bias, position
    embeddings, ...) and names matching ``model.no_weight_decay()`` exactly or as a prefix/substring.
    """
    keys = [k for k in no_wd_keys if k]
    model_names = _model_no_wd_names(model)
    norm_params = set()
    for mname, m in model.named_modules():
        if isinstance(m, _NORM_TYPES) or "norm" in type(m).__name__.lower():
            for pname, _ in m.named_parameters(recurse=False):
                norm_params.add(f"{mname}.{pname}" if mname else pname)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = (p.ndim <= 1 or name.endswith(".bias") or name in norm_params
                or any(k in name for k in keys)
                or any(name == n or name.startswith(n + ".") or n in name for n in model_names))
        (no_decay if skip else decay).append(name)
    return decay, no_decay


def build_optimizer(model: nn.Module, cfg: Dict[str, Any], lr: float) -> torch.optim.Optimizer:
    o = cfg["optim"]
    decay, no_decay = split_weight_decay(model, o["no_weight_decay_keys"])
    params = dict(model.named_parameters())
    groups = []
    if decay:
        groups.append({"params": [params[n] for n in decay], "weight_decay": float(o["weight_decay"])})
    if no_decay:
        groups.append({"params": [params[n] for n in no_decay], "weight_decay": 0.0})
    kwargs = {}
    if next(model.parameters()).is_cuda:
        kwargs["fused"] = True
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(o["betas"]), eps=float(o["eps"]), **kwargs)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Dict[str, Any], updates_per_epoch: int):
    """timm CosineLRScheduler stepped once per optimizer update (warmup then cosine to min_lr)."""
    from timm.scheduler import CosineLRScheduler
    s = cfg["sched"]
    f = lr_scale(cfg)
    warmup = int(round(s["warmup_epochs"] * updates_per_epoch))
    total = s["epochs"] * updates_per_epoch
    return CosineLRScheduler(
        optimizer, t_initial=max(1, total - warmup), lr_min=float(s["min_lr"]) * f,
        warmup_t=warmup, warmup_lr_init=float(s["warmup_lr"]) * f, warmup_prefix=True,
        cycle_limit=1, t_in_epochs=False)


def lr_scale(cfg: Dict[str, Any]) -> float:
    """Linear scaling of lr, warmup_lr and min_lr: batch_size / lr_ref_batch (1 when lr_ref_batch is None)."""
    ref = cfg["optim"]["lr_ref_batch"]
    return cfg["train"]["batch_size"] / ref if ref else 1.0


def effective_lr(cfg: Dict[str, Any]) -> float:
    return float(cfg["optim"]["lr"]) * lr_scale(cfg)
