"""Mapping official checkpoints onto vssm module names (shared by every family's checkpoint_filter_fn)."""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ["CheckpointMismatchError", "unwrap_state_dict", "remap_state_dict"]

_WRAPPER_KEYS = ("model", "state_dict", "ema_model", "model_ema", "module")


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the model: names the missing / unexpected / mis-shaped keys."""

    def __init__(self, arch: str, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                 mismatched: Sequence[Tuple[str, tuple, tuple]] = ()):
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        parts = [f"checkpoint does not match {arch}:"]
        if self.missing:
            parts.append(f"missing keys ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected keys ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        if self.mismatched:
            parts.append("shape mismatch: " + ", ".join(
                f"{k} checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in self.mismatched))
        super().__init__(" ".join(parts))


def unwrap_state_dict(checkpoint: Mapping) -> dict:
    """The state dict inside a training checkpoint (``{'model': sd}``, ``{'state_dict': sd}``, EMA entries),
    every leading ``module.`` removed."""
    sd = checkpoint
    while isinstance(sd, Mapping) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
        for key in _WRAPPER_KEYS:
            if key in sd and isinstance(sd[key], Mapping):
                sd = sd[key]
                break
        else:
            break
    if not isinstance(sd, Mapping):
        raise TypeError(f"expected a state dict (or a dict holding one under 'model'), got {type(checkpoint)}")
    out = {}
    for k, v in sd.items():
        while k.startswith("module."):  # DDP / EMA wrappers, also nested (module.module.)
            k = k[len("module."):]
        out[k] = v
    return out


def remap_state_dict(
        state_dict: Mapping,
        model: nn.Module,
        rules: Iterable[Tuple[str, str]],
        classifier: str = "head.fc",
        drop: Iterable[str] = (),
        input_conv: Optional[str] = None,
) -> dict:
    """Rename keys with regex ``rules`` (applied in order, each with ``re.sub``), drop keys matching any
    regex in ``drop``, reshape tensors that differ from the model's only by singleton dims (Linear2d /
    1x1-conv weights), then check the result against ``model.state_dict()``.

    Keys under ``classifier`` are exempt from the check (timm drops / adapts the classifier when
    ``num_classes`` differs), and so is a differing input-channel dim of ``input_conv``'s weight (timm adapts
    it for ``in_chans``); every other missing, unexpected or mis-shaped key raises
    :class:`CheckpointMismatchError` naming them.
    """
    rules = [(re.compile(p), r) for p, r in rules]
    drop = [re.compile(p) for p in drop]
    target = model.state_dict()
    out = {}
    for key, value in unwrap_state_dict(state_dict).items():
        if any(d.search(key) for d in drop):
            continue
        for pattern, repl in rules:
            key = pattern.sub(repl, key)
        ref = target.get(key)
        if (ref is not None and isinstance(value, torch.Tensor) and value.shape != ref.shape
                and value.numel() == ref.numel()
                and [s for s in value.shape if s != 1] == [s for s in ref.shape if s != 1]):
            value = value.reshape(ref.shape)
        out[key] = value

    def exempt(k):
        return k == classifier or k.startswith(classifier + ".")

    missing = [k for k in target if k not in out and not exempt(k)]
    unexpected = [k for k in out if k not in target and not exempt(k)]
    def in_chans_only(k, a, b):
        return (input_conv is not None and k == input_conv + ".weight" and a.dim() == b.dim() == 4
                and a.shape[0] == b.shape[0] and a.shape[2:] == b.shape[2:])

    mismatched = [(k, tuple(v.shape), tuple(target[k].shape)) for k, v in out.items()
                  if k in target and not exempt(k) and isinstance(v, torch.Tensor) and v.shape != target[k].shape
                  and not in_chans_only(k, v, target[k])]
    if missing or unexpected or mismatched:
        arch = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise CheckpointMismatchError(arch, missing, unexpected, mismatched)
    return out
