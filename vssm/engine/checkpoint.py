"""Atomic checkpoints, RNG state capture, and loading of ours or official weights."""
from __future__ import annotations

import os
import logging
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch

from .._checkpoint import load_checkpoint_file

_logger = logging.getLogger(__name__)


def _atomic_write(path: Path, mode: str, write) -> None:
    """``write(file)`` into a temp file beside ``path``, fsync, then ``os.replace`` it over ``path``: a reader
    (or a run killed meanwhile) sees the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: Path) -> None:
    _atomic_write(path, "wb", lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: Path) -> None:
    _atomic_write(path, "w", lambda f: f.write(text))


def atomic_copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as f:
        _atomic_write(dst, "wb", lambda out: shutil.copyfileobj(f, out))


def rng_state() -> Dict[str, Any]:
    """Every RNG's state as tensors and plain Python values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st = {"python": random.getstate(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
          "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state()
    return st


def set_rng_state(st: Dict[str, Any]) -> None:
    random.setstate(st["python"])
    kind, keys, *rest = st["numpy"]  # keys: an int64 tensor, or a numpy array in files written before tensors
    np.random.set_state((kind, np.asarray(keys.numpy() if torch.is_tensor(keys) else keys, dtype=np.uint32), *rest))
    torch.set_rng_state(st["torch"].cpu() if hasattr(st["torch"], "cpu") else st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state(st["cuda"].cpu())


def load(path: str) -> Dict[str, Any]:
    """A checkpoint file (ours or official) read with ``weights_only=True``; see
    :func:`vssm.load_checkpoint_file` for what is allowed besides tensors."""
    return load_checkpoint_file(path, map_location="cpu")


EMA_KEYS = ("state_dict_ema", "ema", "model_ema")  # timm's (ours), ours before state_dict_ema, official


def ema_state_dict(ckpt: Any) -> Optional[Dict[str, torch.Tensor]]:
    """The EMA weights of a checkpoint (``state_dict_ema``; ``ema`` in our files before the change), or None."""
    if isinstance(ckpt, dict):
        for k in EMA_KEYS:
            if isinstance(ckpt.get(k), dict) and ckpt[k]:
                return ckpt[k]
    return None


def extract_state_dict(ckpt: Any, prefer_ema: bool = False) -> Dict[str, torch.Tensor]:
    """Weights from ours and timm's ({'state_dict', 'state_dict_ema'}; ours also under 'model', older files only
    there and with the EMA under 'ema') or official layouts ({'model'}, {'state_dict'}, raw)."""
    if not isinstance(ckpt, dict):
        raise ValueError("checkpoint is not a dict")
    order = (list(EMA_KEYS) if prefer_ema else []) + ["model", "state_dict", "module"]
    sd = None
    for k in order:
        if isinstance(ckpt.get(k), dict) and ckpt[k]:
            sd = ckpt[k]
            break
    if sd is None:
        if prefer_ema:
            raise ValueError("checkpoint has no EMA weights (keys: %s)" % ", ".join(map(str, list(ckpt)[:10])))
        sd = ckpt
    out = {}
    for k, v in sd.items():
        if not torch.is_tensor(v):
            continue
        for pre in ("module.", "_orig_mod."):
            if k.startswith(pre):
                k = k[len(pre):]
        out[k] = v
    if not out:
        raise ValueError("checkpoint contains no tensors")
    return out


def load_weights(model: torch.nn.Module, ckpt: Any, prefer_ema: bool = False, strict: bool = False,
                 log=_logger.info) -> Dict[str, Any]:
    """Load weights into ``model``: applies the model module's ``checkpoint_filter_fn`` when it exists
    (official key layouts), drops tensors whose shape differs (e.g. a classifier for another number of
    classes) and reports what was missing/unexpected."""
    sd = extract_state_dict(ckpt, prefer_ema)
    mod = sys.modules.get(type(model).__module__)
    filt = getattr(mod, "checkpoint_filter_fn", None)
    if callable(filt):
        try:
            sd = filt(sd, model)
        except Exception as e:
            if strict:
                raise ValueError(f"checkpoint does not fit {type(model).__name__}: {e}") from None
            log(f"checkpoint_filter_fn of {mod.__name__} failed ({e}); loading keys as-is")
    own = model.state_dict()
    mismatched = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    for k in mismatched:
        sd.pop(k)
    res = model.load_state_dict(sd, strict=False)
    info = {"missing": list(res.missing_keys), "unexpected": list(res.unexpected_keys), "shape_mismatch": mismatched}
    if strict and (info["missing"] or info["unexpected"] or mismatched):
        raise ValueError(f"checkpoint does not match the model: {len(info['missing'])} missing "
                         f"(e.g. {info['missing'][:3]}), {len(info['unexpected'])} unexpected "
                         f"(e.g. {info['unexpected'][:3]}), shape mismatch {mismatched[:3]}")
    if info["missing"] or info["unexpected"] or mismatched:
        log(f"loaded weights: {len(info['missing'])} missing, {len(info['unexpected'])} unexpected, "
            f"{len(mismatched)} shape-mismatched keys (e.g. {(info['missing'] + mismatched)[:4]})")
    return info
