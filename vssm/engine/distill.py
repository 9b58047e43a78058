"""Knowledge distillation as trained by the official GroupMamba code (DeiT's hard / soft distillation).

The student returns ``(logits, dist_logits)`` in training mode (e.g. GroupMamba's distillation classifier
after ``set_distilled_training(True)``, which ``vssm.engine.train`` calls when a teacher is set); a frozen
teacher (any timm model, weights from a local file, nothing downloaded) labels the same (mixed) images:

    base = base_criterion(logits, target)               # soft-target CE under mixup, as usual
    hard: kd = CE(dist_logits, argmax(teacher(images)))
    soft: kd = KL(softmax(teacher / tau) || softmax(dist_logits / tau)) * tau^2, summed, / dist_logits.numel()
    loss = (1 - alpha) * base + alpha * kd              # official defaults: hard, alpha 0.5, tau 1.0

With ``kind="none"`` (or no teacher) only ``base`` on the first output is used, so a distilled student can
also be trained without a teacher. A plain tensor output is accepted only then.

Why not ``timm.task.TokenDistillationTask`` (timm >= 1.0.26), which has the same hard / soft forms: its soft
term is the KL divergence with ``batchmean`` (divided by the batch), DeiT's and GroupMamba's divide the summed KL
by ``dist_logits.numel()`` (batch x classes), so a subclass would replace its whole ``forward``; it re-normalises
the teacher's input from the two models' ``pretrained_cfg`` mean / std where the official code feeds the teacher
the student's input unchanged (the digits recipe trains with mean 0.5 under an ImageNet ``pretrained_cfg``); a
task owns the student's forward and its DDP wrapper, while the engine's step calls the model itself (``no_sync``
under accumulation, the tuple-safe ``none`` mode) and hands this loss the outputs.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DistillationLoss", "build_teacher", "split_outputs", "DISTILL_KINDS"]

DISTILL_KINDS = ("hard", "soft", "none")
_logger = logging.getLogger(__name__)
Outputs = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


def split_outputs(outputs: Outputs) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(logits, dist_logits)`` from a model output: a tensor, or a 2-tuple/list (distilled students)."""
    if isinstance(outputs, torch.Tensor):
        return outputs, None
    if isinstance(outputs, (tuple, list)) and len(outputs) == 2:
        return outputs[0], outputs[1]
    raise TypeError(f"expected a logits tensor or a (logits, dist_logits) pair, got {type(outputs).__name__}"
                    + (f" of length {len(outputs)}" if isinstance(outputs, (tuple, list)) else ""))


class DistillationLoss(nn.Module):
    """``forward(inputs, outputs, target)``: the official GroupMamba / DeiT distillation objective.

    Args:
        base_criterion: loss on the class logits (e.g. ``SoftTargetCrossEntropy`` under mixup).
        teacher: frozen teacher model (kept in eval mode, run under ``no_grad``); required unless kind is "none".
        kind: "hard" (official default), "soft" or "none".  alpha: weight of the distillation term (0.5).
        tau: softmax temperature of "soft" (1.0).
    """

    def __init__(self, base_criterion: nn.Module, teacher: Optional[nn.Module] = None, kind: str = "hard",
                 alpha: float = 0.5, tau: float = 1.0):
        super().__init__()
        if kind not in DISTILL_KINDS:
            raise ValueError(f"distillation kind must be one of {DISTILL_KINDS}, got {kind!r}")
        if kind != "none" and teacher is None:
            raise ValueError(f"{kind} distillation needs a teacher model")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {alpha}")
        if tau <= 0:
            raise ValueError(f"distillation tau must be > 0, got {tau}")
        self.base_criterion = base_criterion
        self.teacher = teacher if kind != "none" else None
        if self.teacher is not None:
            self.teacher.eval().requires_grad_(False)
        self.kind, self.alpha, self.tau = kind, float(alpha), float(tau)

    def train(self, mode: bool = True) -> "DistillationLoss":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher never leaves eval mode
        return self

    def teacher_logits(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.teacher(inputs)
        out, _ = split_outputs(out)  # a distilled teacher in eval mode returns one tensor anyway
        return out.float()

    def forward(self, inputs: torch.Tensor, outputs: Outputs, target: torch.Tensor) -> torch.Tensor:
        logits, dist = split_outputs(outputs)
        base = self.base_criterion(logits.float(), target)
        if self.kind == "none":
            return base
        if dist is None:
            raise ValueError(f"{self.kind} distillation needs a student returning (logits, dist_logits) in "
                             "training mode (e.g. GroupMamba with distillation=True); got a single tensor")
        dist = dist.float()
        teacher = self.teacher_logits(inputs)
        if teacher.shape != dist.shape:
            raise ValueError(f"teacher logits {tuple(teacher.shape)} and student distillation logits "
                             f"{tuple(dist.shape)} differ: build the teacher with the student's num_classes")
        if self.kind == "soft":
            T = self.tau
            kd = F.kl_div(F.log_softmax(dist / T, dim=1), F.log_softmax(teacher / T, dim=1),
                          reduction="sum", log_target=True) * (T * T) / dist.numel()
        else:
            kd = F.cross_entropy(dist, teacher.argmax(dim=1))
        return base * (1.0 - self.alpha) + kd * self.alpha

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, alpha={self.alpha}, tau={self.tau}"


def build_teacher(name: str, checkpoint: Optional[Union[str, Mapping[str, Any]]] = None, num_classes: int = 1000,
                  in_chans: int = 3, device: Union[str, torch.device] = "cpu", log=_logger.info,
                  allow_random: bool = False, **model_kwargs) -> nn.Module:
    """A frozen teacher: ``timm.create_model(name, pretrained=False, ...)`` (any timm or vssm model) with the
    weights of ``checkpoint`` (a path or a loaded dict: ours, an official ``{'model': sd}`` file, or a bare
    state dict; official layouts go through the model's ``checkpoint_filter_fn``). Loading is strict.
    Nothing is downloaded: without a checkpoint this raises, unless ``allow_random`` (smoke tests only)."""
    import timm
    import vssm  # noqa: F401  (registers the vssm models)
    from . import checkpoint as ckpt_mod

    if checkpoint is None and not allow_random:
        raise ValueError(f"teacher {name!r} needs its weights: pass a local checkpoint file (--teacher-checkpoint); "
                         "nothing is downloaded")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **model_kwargs)
    if checkpoint is not None:
        ck = ckpt_mod.load(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
        ckpt_mod.load_weights(model, ck, prefer_ema=False, strict=True, log=log or _logger.debug)
    elif log is not None:
        log(f"teacher {name}: no checkpoint given, RANDOM weights (allow_random=True)")
    return model.to(device).eval().requires_grad_(False)
