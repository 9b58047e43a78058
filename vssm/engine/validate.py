"""Evaluation: top-1/top-5 (reduced across ranks) and throughput, plus the ``vssm-validate`` CLI.

    vssm-validate --checkpoint output/train/<run>/last.pth            # ours: model/data from its config
    vssm-validate --checkpoint vssm1_tiny_0230s_ckpt_epoch_264.pth --model vmamba_tiny --data /imagenet
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from timm.utils import accuracy

from . import config
from .metrics import progress_bar, setup_logging

_logger = logging.getLogger("vssm.engine.validate")  # also when run as __main__


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, env, amp: str = "none", channels_last: bool = False,
             progress: bool = False, desc: str = "val") -> Dict[str, float]:
    """Top-1/top-5 (``timm.utils.accuracy``) and mean CE loss over the whole (sharded) loader, summed over ranks."""
    from .dist import autocast
    model.eval()
    device = env.device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss_sum, correct1, correct5, count
    batches = (progress_bar(loader, desc=desc, leave=False) if progress and env.is_main else None) or loader
    t0 = time.perf_counter()
    for images, target in batches:
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            out = model(images)
        if isinstance(out, (tuple, list)):  # a distilled student that returns both heads: average them
            out = (out[0].float() + out[1].float()) / 2
        out, n = out.float(), target.numel()
        top1, top5 = accuracy(out, target, topk=(1, 5))
        sums += torch.stack([F.cross_entropy(out, target, reduction="sum").double(), top1.double() * n / 100,
                             top5.double() * n / 100, torch.tensor(float(n), dtype=torch.float64, device=device)])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    loss_sum, correct1, correct5, n = env.all_reduce_sum(sums).tolist()
    n = max(n, 1.0)
    return {"loss": loss_sum / n, "top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "count": int(n),
            "time_s": elapsed, "img_s": n / max(elapsed, 1e-9)}


@torch.no_grad()
def benchmark(model: torch.nn.Module, batch_size: int, img_size: int, device: torch.device, amp: str,
              iters: int = 20, warmup: int = 5, channels_last: bool = False) -> float:
    """Forward-only images/s on a fixed random batch (model throughput without data loading)."""
    from .dist import autocast
    model.eval()
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for i in range(warmup + iters):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        with autocast(device, amp):
            model(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch_size * iters / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vssm-validate", description="Top-1/top-5 and throughput of a checkpoint "
                                "(ours or official) on an ImageFolder val split.")
    p.add_argument("--checkpoint", "-c", required=True, help="checkpoint file (ours: last.pth/best.pth; or official)")
    p.add_argument("--split", help="split folder under --data (default: val)")
    p.add_argument("--config", help="recipe whose data settings (img_size, crop_pct, ...) to use")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights stored in the checkpoint")
    p.add_argument("--batch-size", type=int, default=None, help="per-process batch size (default 128)")
    p.add_argument("--num-classes", type=int, default=None, help="default: number of class folders")
    p.add_argument("--throughput-iters", type=int, default=20, help="forward-only benchmark iterations (0 = skip)")
    p.add_argument("--json", dest="json_out", help="also write the result to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    # the model, data and precision flags of vssm-train (default: the checkpoint's config)
    config.add_flags(p, only=("model.name", "data.root", "data.img_size", "data.crop_pct", "data.workers",
                              "train.amp", "train.device"))
    return p


def _prepare(args) -> Dict[str, Any]:
    """Config (the checkpoint's, or a recipe's / the ImageNet defaults for official files) and checkpoint."""
    if not Path(args.checkpoint).expanduser().is_file():
        raise config.ConfigError(f"checkpoint '{args.checkpoint}' not found")
    from .checkpoint import ema_state_dict, load
    try:
        ckpt = load(str(Path(args.checkpoint).expanduser()))
    except Exception as e:
        raise config.ConfigError(f"cannot read checkpoint '{args.checkpoint}': {e}") from None
    ours = isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict) and "model" in ckpt
    if ours and not args.config:
        cfg = config.build_config(base=ckpt["config"])
    else:
        # an official checkpoint without --config: ImageNet eval settings (224, crop_pct 0.875, bicubic,
        # mean/std from the model's pretrained_cfg)
        cfg = config.build_config(recipe=args.config) if args.config else config.build_config(base=config.DEFAULTS)
        if not ours and not getattr(args, "model.name"):
            raise config.ConfigError("this checkpoint carries no config: pass --model NAME (and --data)")
        if not ours and not getattr(args, "data.root") and not args.config:
            raise config.ConfigError("this checkpoint carries no config: pass --data ROOT (ImageFolder with val/)")
    flags = config.flag_overrides(args)
    if args.split:
        flags.setdefault("data", {})["val_split"] = args.split
    cfg = config.merge(cfg, flags, "command line")
    if args.batch_size is not None and args.batch_size < 1:
        raise config.ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.ema and not (ours and ema_state_dict(ckpt)):
        raise config.ConfigError("--ema: this checkpoint has no EMA weights")
    import vssm  # noqa: F401  (registers the vssm models in timm)
    config.check_values(cfg)
    config.check_model_name(cfg["model"]["name"])
    d = cfg["data"]
    if d["root"] is not None and not (Path(d["root"]).expanduser() / d["val_split"]).is_dir():
        raise config.ConfigError(f"data root '{d['root']}' has no '{d['val_split']}/' folder")
    return {"cfg": config.Config.from_dict(cfg), "ckpt": ckpt}


def run(args) -> Dict[str, Any]:
    import timm
    from torchvision.datasets import ImageFolder

    from . import dist
    from .checkpoint import load_weights
    from .data import build_val_loader, resolve_norm
    from .train import _data_root

    prep = _prepare(args)
    cfg, ckpt = prep["cfg"], prep["ckpt"]
    env = dist.init(cfg.train.device)
    setup_logging(env.is_main)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    try:
        val_dir = str(_data_root(cfg, env) / cfg.data.val_split)
        n_classes = args.num_classes or len(ImageFolder(val_dir).classes)
        model = timm.create_model(cfg.model.name, num_classes=n_classes, **cfg.model.kwargs)
        try:
            info = load_weights(model, ckpt, prefer_ema=args.ema, strict=True)
        except ValueError as e:
            raise config.ConfigError(f"{args.checkpoint}: {e} (model {cfg.model.name}, {n_classes} classes)") from None
        model.to(env.device)
        batch_size = args.batch_size or 128
        mean, std = resolve_norm(cfg, model)
        _, loader = build_val_loader(cfg, val_dir, mean, std, env.rank, env.world_size, env.device.type == "cuda",
                                     batch_size=batch_size)
        res = evaluate(model, loader, env, amp=cfg.train.amp, progress=not args.no_progress)
        if args.throughput_iters > 0 and env.is_main:
            res["forward_img_s"] = benchmark(model, batch_size, cfg.data.img_size, env.device, cfg.train.amp,
                                             iters=args.throughput_iters)
        res.update({"model": cfg.model.name, "weights": "ema" if args.ema else "model",
                    "checkpoint": str(args.checkpoint), "data": val_dir, "world_size": env.world_size,
                    "device": str(env.device), "amp": cfg.train.amp, "missing_keys": len(info["missing"])})
        _logger.info(f"{res['model']} ({res['weights']} weights) on {res['count']} images of {val_dir}: "
                     f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  loss {res['loss']:.4f}  "
                     f"eval {res['img_s']:.1f} img/s end-to-end" + (
                         f", {res['forward_img_s']:.1f} img/s forward-only (batch {batch_size})"
                         if "forward_img_s" in res else ""))
        if env.is_main and args.json_out:
            Path(args.json_out).write_text(json.dumps(res, indent=1))
        return res
    finally:
        dist.cleanup()


def main(argv: Optional[list] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except config.ConfigError as e:
        parser.error(str(e))  # exits with status 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
