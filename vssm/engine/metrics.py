"""The engine's log (``logging``), per-epoch metrics (CSV + JSON), per-step CSV, and the loss/accuracy plot."""
from __future__ import annotations

import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from .checkpoint import atomic_write_text

def setup_logging(is_main: bool, log_file: Optional[Path] = None) -> None:
    """Messages of the ``vssm.engine`` loggers to stdout (rank 0: info, other ranks: warnings) and, on rank 0,
    to ``log_file``."""
    logger = logging.getLogger("vssm.engine")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    handlers = [logging.StreamHandler(sys.stdout)] + ([logging.FileHandler(log_file)] if log_file else [])
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.propagate = False


EPOCH_FIELDS = ["epoch", "step", "lr", "train_loss", "val_loss", "top1", "top5", "ema_val_loss", "ema_top1",
                "ema_top5", "epoch_time_s", "train_img_s"]


class MetricsLog:
    """Holds the per-epoch history; rewrites metrics.csv / metrics.json atomically after each epoch."""

    def __init__(self, out_dir: Path, history: Optional[List[Dict[str, Any]]] = None):
        self.out_dir = Path(out_dir)
        self.history: List[Dict[str, Any]] = list(history or [])
        self.steps_path = self.out_dir / "train_steps.csv"

    def add_epoch(self, row: Dict[str, Any]) -> None:
        self.history = [r for r in self.history if r["epoch"] < row["epoch"]] + [row]
        self.write()

    def write(self) -> None:
        atomic_write_text(json.dumps(self.history, indent=1), self.out_dir / "metrics.json")
        fields = list(EPOCH_FIELDS) + sorted({k for r in self.history for k in r} - set(EPOCH_FIELDS))
        lines = [",".join(fields)]
        for r in self.history:
            lines.append(",".join(_fmt(r.get(f)) for f in fields))
        atomic_write_text("\n".join(lines) + "\n", self.out_dir / "metrics.csv")

    def truncate_steps(self, last_step: int) -> None:
        """On resume: drop step rows written after the checkpoint (from the epoch that was lost)."""
        if not self.steps_path.exists():
            return
        with open(self.steps_path) as f:
            rows = list(csv.reader(f))
        if not rows:
            return
        keep = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= last_step]
        atomic_write_text("\n".join(",".join(r) for r in keep) + "\n", self.steps_path)

    def open_steps(self):
        new = not self.steps_path.exists()
        f = open(self.steps_path, "a", buffering=1)
        if new:
            f.write("step,epoch,iter,loss,lr,grad_norm\n")
        return f


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def read_steps(path: Path) -> List[Dict[str, float]]:
    with open(path) as f:
        return [{k: float(v) if v not in ("", None) else None for k, v in r.items()} for r in csv.DictReader(f)]


def progress_bar(iterable=None, **kwargs):
    """A tqdm progress bar, or None when tqdm (in the ``vssm[train]`` extra) is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(iterable, dynamic_ncols=True, **kwargs)


def plot_curves(history: List[Dict[str, Any]], steps: Optional[List[Dict[str, float]]], path: Path,
                title: str = "") -> None:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("training curves need matplotlib: pip install 'vssm[train]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    if steps:
        # step losses on an epoch axis, smoothed over a short window
        xs = [s["step"] for s in steps]
        ys = [s["loss"] for s in steps]
        per_epoch = max(1.0, max(xs) / max(1, history[-1]["epoch"])) if history else 1.0
        k = max(1, len(ys) // 100)
        sm = [sum(ys[max(0, i - k + 1): i + 1]) / len(ys[max(0, i - k + 1): i + 1]) for i in range(len(ys))]
        ax_l.plot([x / per_epoch for x in xs], sm, lw=0.8, alpha=0.7, label="train (step)")
    ep = [r["epoch"] for r in history]
    if history:
        ax_l.plot(ep, [r["train_loss"] for r in history], "o-", label="train (epoch mean)")
        ax_l.plot(ep, [r["val_loss"] for r in history], "s-", label="val")
        ax_a.plot(ep, [r["top1"] for r in history], "o-", label="top-1")
        ax_a.plot(ep, [r["top5"] for r in history], "o--", label="top-5", alpha=0.6)
        if any(r.get("ema_top1") is not None for r in history):
            ax_a.plot(ep, [r.get("ema_top1") for r in history], "s-", label="EMA top-1")
    for ax, ylabel, axis_title in ((ax_l, "loss", "loss"), (ax_a, "accuracy (%)", "val accuracy")):
        ax.set(xlabel="epoch", ylabel=ylabel, title=axis_title)
        ax.legend()
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
