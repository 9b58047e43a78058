"""Run-time fixes that let mmengine 0.10.7 / mmcv 2.1.0 / mmdet 3.3.0 / mmseg 1.2.2 work with current
torch, numpy and setuptools. Applied once by :func:`apply` (``import vssm.mm`` calls it); nothing in
site-packages is modified.

What breaks and what we do:

* ``torch.load`` defaults to ``weights_only=True`` since torch 2.6. mmengine calls it without the argument,
  so resuming from or loading a checkpoint that mmengine itself saved fails: the checkpoint's ``meta``
  holds the ``MessageHub`` state (``HistoryBuffer`` objects with numpy arrays), numpy scalars and
  ``collections`` containers. We allow-list exactly those types with ``torch.serialization.add_safe_globals``,
  and make ``HistoryBuffer`` stop pickling its built-in statistics methods (mmengine stores them as
  ``getattr(HistoryBuffer, 'min')``, and ``getattr`` cannot be allow-listed safely), so checkpoints saved
  with ``vssm.mm`` imported load under ``weights_only=True``. Files that still need arbitrary pickled objects (e.g.
  older OpenMMLab model-zoo checkpoints) are retried with ``weights_only=False`` *with a warning*, which is
  what torch < 2.6 did for every file; set ``VSSM_MM_STRICT_LOAD=1`` to turn the retry off. Classes of
  modules that are not installed (the ``yacs`` config inside official VMamba checkpoints) load as inert
  dict-like stand-ins. ``http(s)://`` checkpoints are downloaded into torch.hub's cache and loaded the same way.
* setuptools >= 81 no longer ships ``pkg_resources``; mmengine's ``is_installed`` / ``get_installed_path`` /
  ``package2module`` import it, so ``Config.fromfile`` with ``mmdet::`` / ``mmseg::`` base configs and
  ``custom_imports`` checks fail. We replace these three functions (in every mmengine module that bound
  them) with ``importlib.metadata`` equivalents.
"""
from __future__ import annotations

import collections
import importlib
import importlib.metadata
import importlib.util
import io
import os
import os.path as osp
import pickle
import re
import sys
import warnings
from typing import Any, List

import numpy as np
import torch

__all__ = ["apply", "load_checkpoint_file", "mm_safe_globals"]

_APPLIED = False


# ---- torch.load ------------------------------------------------------------------------------------

def mm_safe_globals() -> List[Any]:
    """Types found in mmengine / mmdet / mmseg checkpoints that are safe to unpickle (plain data)."""
    out: List[Any] = [
        collections.OrderedDict, collections.defaultdict, collections.Counter, collections.deque,
        np.ndarray, np.dtype,
        set, frozenset, slice, complex,
    ]
    # numpy arrays / scalars pickle through these reconstructors (module moved to numpy._core in 2.0)
    for modname in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        for name in ("_reconstruct", "scalar"):
            if hasattr(mod, name):
                out.append(getattr(mod, name))
        break
    # numpy >= 1.25 pickles dtypes as instances of per-type classes (numpy.dtypes.Float64DType, ...)
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType") and isinstance(getattr(dtypes, n), type)]
    try:
        from mmengine.logging import HistoryBuffer
        out.append(HistoryBuffer)
    except ImportError:
        pass
    try:
        from mmengine.config import ConfigDict
        out.append(ConfigDict)
    except ImportError:
        pass
    return out


class _MissingClass(dict):
    """Stand-in for a class whose module is not installed (e.g. the yacs ``CfgNode`` in official VMamba
    checkpoints): keeps whatever state the pickle carries, never runs code."""

    _vssm_missing = ""

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __reduce__(self):  # pragma: no cover - never re-pickled by us
        return (dict, (dict(self),))


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            stub = type(name, (_MissingClass,), {"_vssm_missing": f"{module}.{name}", "__module__": "vssm.mm.compat"})
            return stub


class _LenientPickleModule:
    """``pickle_module`` for ``torch.load``: the standard pickle, except that classes from modules that
    are not installed become inert dict-like stand-ins instead of failing the whole load."""
    Unpickler = _LenientUnpickler
    load = staticmethod(lambda f, **kw: _LenientUnpickler(f, **kw).load())
    loads = staticmethod(lambda b, **kw: _LenientUnpickler(io.BytesIO(b), **kw).load())
    __name__ = "vssm_lenient_pickle"


def _strict() -> bool:
    return os.environ.get("VSSM_MM_STRICT_LOAD", "0") not in ("", "0", "false", "False")


def load_checkpoint_file(f, map_location="cpu", source: str = ""):
    """``torch.load`` for checkpoints named in configs (local path or file object).

    Tries ``weights_only=True`` (with :func:`mm_safe_globals` allowed) first. If the file needs other
    pickled objects it is loaded again with ``weights_only=False`` and a warning (torch < 2.6 behaviour),
    unless ``VSSM_MM_STRICT_LOAD=1``. Classes from modules that are not installed (e.g. ``yacs`` configs
    stored next to the weights of the official VMamba releases) load as plain dict-like stand-ins.
    """
    source = source or (f if isinstance(f, str) else getattr(f, "name", "<buffer>"))
    seekable = hasattr(f, "seek")
    pos = f.tell() if seekable else None
    try:
        # (not the safe_globals context manager: leaving it removes the globals registered for good)
        torch.serialization.add_safe_globals(mm_safe_globals())
        return torch.load(f, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if _strict():
            raise pickle.UnpicklingError(
                f"{source}: needs pickled objects beyond tensors and plain data, and VSSM_MM_STRICT_LOAD is "
                f"set. Re-save only its state dict, or unset VSSM_MM_STRICT_LOAD if you trust the file. "
                f"torch said: {err}") from err
        found = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(err))))
        if isinstance(f, (str, os.PathLike)):
            try:
                found = torch.serialization.get_unsafe_globals_in_checkpoint(f) or found
            except Exception:  # pragma: no cover - best effort for the message only
                pass
        warnings.warn(f"{source}: not loadable with weights_only=True (it pickles {', '.join(found) or 'objects'}"
                      f"); loading it with "
                      f"weights_only=False because a config named it. Set VSSM_MM_STRICT_LOAD=1 to refuse.",
                      stacklevel=2)
        if seekable:
            f.seek(pos)
        return torch.load(f, map_location=map_location, weights_only=False, pickle_module=_LenientPickleModule)


_DEFAULT_STATISTICS = ("min", "max", "current", "mean")


def _history_buffer_getstate(self) -> dict:
    """``HistoryBuffer.__getstate__`` that leaves the four built-in statistics methods out of the pickle
    (``__setstate__`` re-registers them anyway). mmengine's version pickles them as
    ``getattr(HistoryBuffer, 'min')``, which ``weights_only=True`` loading cannot allow safely; without
    them a training checkpoint holds plain data only."""
    state = {k: v for k, v in self.__dict__.items() if k != "statistics_methods"}
    custom = {k: v for k, v in self._statistics_methods.items() if k not in _DEFAULT_STATISTICS}
    if custom:
        state["statistics_methods"] = custom
    return state


def _patch_checkpoint_loading() -> None:
    from mmengine.logging import HistoryBuffer
    HistoryBuffer.__getstate__ = _history_buffer_getstate
    torch.serialization.add_safe_globals(mm_safe_globals())
    from mmengine.runner import checkpoint as ckpt_mod

    def load_from_local(filename, map_location):
        filename = osp.expanduser(filename)
        if not osp.isfile(filename):
            raise FileNotFoundError(f"{filename} can not be found.")
        return load_checkpoint_file(filename, map_location=map_location)

    def load_from_http(filename, map_location=None, model_dir=None, progress=False):
        from mmengine.dist import get_dist_info
        rank, world_size = get_dist_info()
        if rank == 0:
            path = _download(filename, model_dir, progress)
        if world_size > 1:
            torch.distributed.barrier()
            if rank > 0:
                path = _download(filename, model_dir, progress)
        return load_checkpoint_file(path, map_location=map_location, source=filename)

    # mmengine dispatches on the filename prefix; '' is the local-file loader.
    ckpt_mod.CheckpointLoader.register_scheme(prefixes="", force=True)(load_from_local)
    ckpt_mod.CheckpointLoader.register_scheme(prefixes=("http://", "https://"), force=True)(load_from_http)
    ckpt_mod.load_from_local = load_from_local
    ckpt_mod.load_from_http = load_from_http


def _download(url: str, model_dir=None, progress: bool = False) -> str:
    """Cached download into ``$TORCH_HOME/hub/checkpoints`` (torch.hub's cache, as mmengine uses)."""
    from urllib.parse import unquote, urlparse
    model_dir = model_dir or osp.join(torch.hub.get_dir(), "checkpoints")
    os.makedirs(model_dir, exist_ok=True)
    path = osp.join(model_dir, osp.basename(unquote(urlparse(url).path)))
    if not osp.exists(path):
        torch.hub.download_url_to_file(url, path, progress=progress)
    return path


# ---- pkg_resources-free package utils --------------------------------------------------------------

def _distribution(package: str):
    try:
        return importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_installed(package: str) -> bool:
    """Whether ``package`` (a distribution or importable module name) is installed."""
    if _distribution(package) is not None:
        return True
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    return spec is not None and spec.origin is not None


def package2module(package: str) -> str:
    """Top-level module name of an installed distribution (``mmsegmentation`` -> ``mmseg``)."""
    dist = _distribution(package)
    if dist is None:
        raise importlib.metadata.PackageNotFoundError(package)
    top = dist.read_text("top_level.txt")
    if top and top.strip():
        return top.split()[0]
    for name in importlib.metadata.packages_distributions().items():
        mod, dists = name
        if dist.metadata["Name"] in dists:
            return mod
    raise ValueError(f"can not infer the module name of {package}")


def get_installed_path(package: str) -> str:
    """Directory of an installed package, by distribution name or module name."""
    dist = _distribution(package)
    if dist is None:
        spec = importlib.util.find_spec(package)
        if spec is None:
            raise importlib.metadata.PackageNotFoundError(package)
        if spec.origin is None:
            raise RuntimeError(f"{package} is a namespace package, which is invalid for `get_install_path`")
        return osp.dirname(spec.origin)
    spec = importlib.util.find_spec(package2module(package) if importlib.util.find_spec(package) is None else package)
    if spec is not None and spec.origin is not None:
        return osp.dirname(spec.origin)
    location = str(dist.locate_file(""))
    return osp.join(location, package2module(package))


def _patch_package_utils() -> None:
    from mmengine.utils import package_utils
    new = {"is_installed": is_installed, "get_installed_path": get_installed_path,
           "package2module": package2module}
    old = {name: getattr(package_utils, name) for name in new}
    for mod in list(sys.modules.values()):
        name = getattr(mod, "__name__", "") or ""
        if not name.startswith(("mmengine", "mmdet", "mmseg", "mmcv", "mim")):
            continue
        for attr, fn in new.items():
            if getattr(mod, attr, None) is old[attr]:
                setattr(mod, attr, fn)


# ---- entry point ----------------------------------------------------------------------------------

def apply() -> None:
    """Apply every fix once (idempotent). Needs mmengine importable."""
    global _APPLIED
    if _APPLIED:
        return
    import mmengine.config  # noqa: F401  (binds package utils we replace)
    import mmengine.hub  # noqa: F401
    import mmengine.runner  # noqa: F401
    _patch_package_utils()
    _patch_checkpoint_loading()
    _APPLIED = True
