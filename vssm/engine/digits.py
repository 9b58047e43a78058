"""Embedded default dataset: scikit-learn's handwritten digits written out as an ImageFolder.

The 1797 8x8 greyscale digits ship inside scikit-learn (nothing is downloaded).  They are written once
as RGB PNGs, upscaled to ``size`` x ``size``, into ``<cache>/digits<size>/{train,val}/<digit>/*.png`` with a
stratified 80/20 split.  The folder is built in a temporary directory and renamed into place, so
concurrent callers (several ranks) never see a half-written dataset.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

DONE_MARKER = ".complete"
VAL_FRACTION = 0.2
SPLIT_SEED = 0
_logger = logging.getLogger(__name__)


def cache_root() -> Path:
    env = os.environ.get("VSSM_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "vssm"


def digits_root(size: int = 32, cache: Optional[Path] = None) -> Path:
    return Path(cache or cache_root()) / f"digits{size}"


def is_ready(root: Path) -> bool:
    return (root / DONE_MARKER).is_file()


def prepare_digits(size: int = 32, cache: Optional[Path] = None, verbose: bool = True) -> Path:
    """Return the ImageFolder root of the digits dataset, writing it first if needed."""
    import numpy as np
    from PIL import Image
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the embedded digits data set comes from scikit-learn: pip install 'vssm[train]'") from None

    root = digits_root(size, cache)
    if is_ready(root):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    if verbose:
        _logger.info(f"writing scikit-learn digits as a {size}x{size} ImageFolder to {root} (once)")

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0          # (N, 8, 8) in [0, 1], 16 grey levels
    labels = digits.target.astype(np.int64)
    rng = np.random.RandomState(SPLIT_SEED)
    is_val = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):                               # stratified split
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        is_val[idx[: int(round(len(idx) * VAL_FRACTION))]] = True

    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        for i, (img, lab) in enumerate(zip(images, labels)):
            split = "val" if is_val[i] else "train"
            d = tmp / split / str(int(lab))
            d.mkdir(parents=True, exist_ok=True)
            g = Image.fromarray((img * 255.0).round().astype(np.uint8), mode="L")
            g = g.resize((size, size), resample=Image.BICUBIC)
            g.convert("RGB").save(d / f"{i:04d}.png")
        (tmp / DONE_MARKER).write_text(f"sklearn digits, {size}x{size}, val_fraction={VAL_FRACTION}, "
                                       f"seed={SPLIT_SEED}\n")
        try:
            os.replace(tmp, root)                              # atomic when root does not exist yet
        except OSError:
            if not is_ready(root):                             # stale partial dir: replace it
                shutil.rmtree(root, ignore_errors=True)
                os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
