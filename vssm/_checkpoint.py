"""Reading checkpoint files without running code from them, and mapping official checkpoints onto vssm module
names (shared by every family's checkpoint_filter_fn)."""
from __future__ import annotations

import argparse
import collections
import importlib
import os
import pickle
import re
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ["CheckpointMismatchError", "UnsafeCheckpointError", "load_checkpoint_file", "unwrap_state_dict",
           "match_state_dict", "numpy_data_globals", "official_file_globals"]


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file pickles objects outside the allowlist (loading it could run code): names the file and
    the offending globals."""


class _InertConfigClass:
    """Stands for a pickled config class that vssm does not import (the yacs ``CfgNode`` in VSSD / VMamba release
    files) while loading with ``weights_only=True``: the restricted unpickler creates the object through
    ``cls.__new__`` and then fills and builds it, which torch allows for a plain ``OrderedDict``; so the config
    loads as an ``OrderedDict`` of its items with its attributes as data, and no code of that package runs."""

    def __init__(self, qualified_name: str):
        self.qualified_name = qualified_name
        self.__new__ = lambda cls, *args: collections.OrderedDict()


_YACS_CONFIG = (_InertConfigClass("yacs.config.CfgNode"), "yacs.config.CfgNode")


def official_file_globals() -> List[Any]:
    """Harmless non-tensor classes that official release files carry: ``argparse.Namespace`` (timm-style ``args``
    of Vim and others), the yacs ``CfgNode`` config (loaded as an ``OrderedDict``) and the sets it holds.
    ``import vssm`` registers them with ``torch.serialization.add_safe_globals``, so timm's own
    ``weights_only=True`` loader takes these files."""
    return [argparse.Namespace, set, _YACS_CONFIG]


def numpy_data_globals() -> List[Any]:
    """numpy arrays, scalars and dtypes, as they pickle (the RNG state in vssm checkpoints written before the
    RNG state was stored as tensors; mmengine checkpoints)."""
    import numpy as np
    out: List[Any] = [np.ndarray, np.dtype]
    for modname in ("numpy._core.multiarray", "numpy.core.multiarray"):  # numpy 2 moved the module
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        out += [getattr(mod, name) for name in ("_reconstruct", "scalar") if hasattr(mod, name)]
        break
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles dtypes as per-type classes (Float64DType, ...)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and isinstance(getattr(dtypes, n), type)]
    return out


def load_checkpoint_file(f, map_location="cpu", extra_globals: Sequence[Any] = (), source: str = "") -> Any:
    """``torch.load(f, weights_only=True)`` with an explicit allowlist: :func:`official_file_globals`,
    :func:`numpy_data_globals` and ``extra_globals``. Anything else pickled in the file raises
    :class:`UnsafeCheckpointError` naming the file and the refused globals; nothing in the file is executed."""
    source = source or (os.fspath(f) if isinstance(f, (str, os.PathLike)) else getattr(f, "name", "<buffer>"))
    registered = set(torch.serialization.get_safe_globals())
    # only what is not registered yet: leaving the context manager removes its globals, also ones registered before
    # TorchVersion (a str): vssm training checkpoints written before the torch version was stored as a str hold one
    ours_before = [torch.torch_version.TorchVersion]
    allowed = [g for g in (*official_file_globals(), *numpy_data_globals(), *ours_before, *extra_globals)
               if g not in registered]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        refused = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(err))))
        raise UnsafeCheckpointError(
            f"{source}: refused to load: the file pickles {', '.join(refused) or 'objects'} beyond tensors and "
            f"the allowed plain-data classes, and unpickling it could run code. Load only files you trust, and "
            f"re-save their state dict (torch.save(state_dict, path)). torch said: {err}") from None

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


def match_state_dict(
        state_dict: Mapping,
        model: nn.Module,
        classifier: str = "head.fc",
        input_conv: Optional[str] = None,
) -> dict:
    """``state_dict`` (unwrapped, see :func:`unwrap_state_dict`) checked against ``model.state_dict()``, tensors
    that differ from the model's only by singleton dims (Linear2d / 1x1-conv weights) reshaped.

    Keys under ``classifier`` are exempt from the check (timm drops / adapts the classifier when
    ``num_classes`` differs), and so is a differing input-channel dim of ``input_conv``'s weight (timm adapts
    it for ``in_chans``); every other missing, unexpected or mis-shaped key raises
    :class:`CheckpointMismatchError` naming them.
    """
    target = model.state_dict()
    out = {}
    for key, value in unwrap_state_dict(state_dict).items():
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
