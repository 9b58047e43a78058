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
  with ``vssm.mm`` imported load under ``weights_only=True``; files saved by unpatched mmengine load too (their
  ``getattr(HistoryBuffer, 'min')`` resolves through a guard that allows nothing else). The yacs config inside
  official VMamba checkpoints loads as inert data (:func:`vssm.load_checkpoint_file`). Any other pickled object is
  refused with an error naming it; ``VSSM_MM_UNSAFE_LOAD=1`` (opt-in, off by default) loads such a file with
  ``weights_only=False``. ``http(s)://`` checkpoints are downloaded into torch.hub's cache and loaded the same way.
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
import os
import os.path as osp
import pickle
import sys
import warnings
from typing import Any, List

import torch

from .._checkpoint import UnsafeCheckpointError, numpy_data_globals
from .._checkpoint import load_checkpoint_file as load_vssm_checkpoint_file

__all__ = ["apply", "load_checkpoint_file", "mm_safe_globals"]

_APPLIED = False


# ---- torch.load ------------------------------------------------------------------------------------

UNSAFE_LOAD_ENV = "VSSM_MM_UNSAFE_LOAD"
_DEFAULT_STATISTICS = ("min", "max", "current", "mean")


def _history_buffer_statistic(owner, name: str):
    """Stands for ``builtins.getattr`` while unpickling: resolves only ``getattr(HistoryBuffer, <statistic>)``
    (how unpatched mmengine pickles a ``HistoryBuffer``'s built-in statistics methods) and refuses the rest."""
    from mmengine.logging import HistoryBuffer
    if owner is HistoryBuffer and name in _DEFAULT_STATISTICS:
        return getattr(owner, name)
    raise pickle.UnpicklingError(f"refused getattr({owner!r}, {name!r}) while unpickling")


def mm_safe_globals() -> List[Any]:
    """Types found in mmengine / mmdet / mmseg checkpoints that are safe to unpickle (plain data)."""
    out: List[Any] = [collections.OrderedDict, collections.defaultdict, collections.Counter, collections.deque,
                      set, frozenset, slice, complex, *numpy_data_globals()]
    try:
        from mmengine.logging import HistoryBuffer
        out += [HistoryBuffer, (_history_buffer_statistic, "builtins.getattr")]
    except ImportError:
        pass
    try:
        from mmengine.config import ConfigDict
        out.append(ConfigDict)
    except ImportError:
        pass
    return out


def _unsafe_load_allowed() -> bool:
    return os.environ.get(UNSAFE_LOAD_ENV, "0") not in ("", "0", "false", "False")


def load_checkpoint_file(f, map_location="cpu", source: str = ""):
    """``torch.load`` for checkpoints named in configs (local path or file object), with ``weights_only=True``
    and the allowlist of :func:`vssm.load_checkpoint_file` plus :func:`mm_safe_globals`.

    A file that pickles anything else raises :class:`vssm.UnsafeCheckpointError`; only with
    ``VSSM_MM_UNSAFE_LOAD=1`` set (a knowing choice for a trusted file) is it loaded with ``weights_only=False``,
    with a warning.
    """
    source = source or (f if isinstance(f, str) else getattr(f, "name", "<buffer>"))
    pos = f.tell() if hasattr(f, "seek") else None
    try:
        return load_vssm_checkpoint_file(f, map_location=map_location, extra_globals=mm_safe_globals(), source=source)
    except UnsafeCheckpointError as err:
        if not _unsafe_load_allowed():
            raise UnsafeCheckpointError(f"{err} Set {UNSAFE_LOAD_ENV}=1 to load it unrestricted if you trust it.") \
                from None
        warnings.warn(f"{source}: loading with weights_only=False because {UNSAFE_LOAD_ENV} is set", stacklevel=2)
        if pos is not None:
            f.seek(pos)
        return torch.load(f, map_location=map_location, weights_only=False)




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
