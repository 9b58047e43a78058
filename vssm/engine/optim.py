"""timm's optimizer factory with the papers' weight-decay exclusions, and timm's cosine schedule with warmup."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Tuple

import torch
from timm.optim import create_optimizer_v2, param_groups_weight_decay
from timm.scheduler import CosineLRScheduler
from torch import nn


def weight_decay_groups(model: nn.Module, weight_decay: float, no_wd_keys: Iterable[str] = ()) -> List[Dict]:
    """timm's weight-decay parameter groups, decay group first: no decay for 1-D tensors, biases, the names the
    model's ``no_weight_decay()`` returns (vssm models list their SSM parameters A_logs, Ds, ... there) and names
    containing one of ``no_wd_keys``."""
    patterns = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    patterns |= {f"*{key}*" for key in no_wd_keys if key}
    groups = param_groups_weight_decay(model, weight_decay, no_weight_decay_list=patterns)
    return sorted(groups, key=lambda group: group["weight_decay"] == 0)


def split_weight_decay(model: nn.Module, no_wd_keys: Iterable[str] = ()) -> Tuple[List[str], List[str]]:
    """Names of the parameters (with decay, without decay) of :func:`weight_decay_groups`."""
    names = {id(p): n for n, p in model.named_parameters()}
    groups = weight_decay_groups(model, 1.0, no_wd_keys)
    decay = [names[id(p)] for g in groups if g["weight_decay"] for p in g["params"]]
    return decay, [names[id(p)] for g in groups if not g["weight_decay"] for p in g["params"]]


def build_optimizer(model: nn.Module, cfg, lr: float) -> torch.optim.Optimizer:
    """``timm.optim.create_optimizer_v2`` on :func:`weight_decay_groups` (fused AdamW on CUDA)."""
    o = cfg.optim
    fused = {"fused": True} if next(model.parameters()).is_cuda else {}
    return create_optimizer_v2(weight_decay_groups(model, o.weight_decay, o.no_weight_decay_keys), o.name, lr=lr,
                               weight_decay=o.weight_decay, betas=tuple(o.betas), eps=o.eps, **fused)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg, updates_per_epoch: int) -> CosineLRScheduler:
    """timm's cosine schedule stepped once per optimizer update (warmup, then cosine to min_lr)."""
    s, scale = cfg.sched, lr_scale(cfg)
    warmup = int(round(s.warmup_epochs * updates_per_epoch))
    return CosineLRScheduler(optimizer, t_initial=max(1, s.epochs * updates_per_epoch - warmup),
                             lr_min=s.min_lr * scale, warmup_t=warmup, warmup_lr_init=s.warmup_lr * scale,
                             warmup_prefix=True, cycle_limit=1, t_in_epochs=False)


def lr_scale(cfg: Any) -> float:
    """Linear scaling of lr, warmup_lr and min_lr: batch_size / lr_ref_batch (1 when lr_ref_batch is None)."""
    ref = cfg.optim.lr_ref_batch
    return cfg.train.batch_size / ref if ref else 1.0


def effective_lr(cfg: Any) -> float:
    return cfg.optim.lr * lr_scale(cfg)
