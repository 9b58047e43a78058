"""Evaluation: top-1/top-5 (reduced across ranks) and throughput, plus the ``vssm-validate`` CLI.

    vssm-validate --checkpoint output/train/<run>/last.pth            # ours: model/data from its config
    vssm-validate --checkpoint vssm1_tiny_0230s_ckpt_epoch_264.pth --model vmamba_tiny --data /imagenet
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from . import config as C
from .metrics import progress_bar


def autocast_ctx(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, env, amp: str = "none", channels_last: bool = False,
             progress: bool = False, desc: str = "val") -> Dict[str, float]:
    """Top-1/top-5 and mean CE loss over the whole (sharded) loader, summed over ranks."""
    model.eval()
    dev = env.device
    sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss_sum, correct1, correct5, count
    it = loader
    if progress and env.is_main:
        it = progress_bar(loader, desc=desc, leave=False) or loader
    t0 = time.perf_counter()
    for images, target in it:
        images = images.to(dev, non_blocking=True)
        target = target.to(dev, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast_ctx(dev, amp):
            out = model(images)
        if isinstance(out, (tuple, list)):  # a distilled student that returns both heads: average them
            out = (out[0].float() + out[1].float()) / 2
        out = out.float()
        loss = F.cross_entropy(out, target, reduction="sum")
        k = min(5, out.shape[1])
        topk = out.topk(k, dim=1).indices
        hit = topk.eq(target[:, None])
        sums += torch.stack([loss.double(), hit[:, :1].sum().double(), hit.any(dim=1).sum().double(),
                             torch.tensor(float(target.numel()), dtype=torch.float64, device=dev)])
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elapsed = time.perf_counter() - t0
    env.all_reduce_sum(sums)
    loss_sum, c1, c5, n = sums.tolist()
    n = max(n, 1.0)
    return {"loss": loss_sum / n, "top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "count": int(n),
            "time_s": elapsed, "img_s": n / max(elapsed, 1e-9)}


@torch.no_grad()
def benchmark(model: torch.nn.Module, batch_size: int, img_size: int, device: torch.device, amp: str,
              iters: int = 20, warmup: int = 5, channels_last: bool = False) -> float:
    """Forward-only images/s on a fixed random batch (model throughput without data loading)."""
    model.eval()
    x = torch.randn(batch_size, 3, img_size, img_size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for i in range(warmup + iters):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        with autocast_ctx(device, amp):
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
    p.add_argument("--data", help="ImageFolder root containing the val split (default: from the checkpoint's "
                                  "config; the embedded digits when that had none)")
    p.add_argument("--split", default=None, help="split folder under --data (default: val)")
    p.add_argument("--model", help="model name (required for official checkpoints)")
    p.add_argument("--config", help="recipe whose data settings (img_size, crop_pct, ...) to use")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights stored in the checkpoint")
    p.add_argument("--batch-size", type=int, default=None, help="per-process batch size (default 128)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--amp", choices=C.AMP_CHOICES, default=None)
    p.add_argument("--device", choices=C.DEVICE_CHOICES, default=None)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--crop-pct", type=float, default=None)
    p.add_argument("--num-classes", type=int, default=None, help="default: number of class folders")
    p.add_argument("--throughput-iters", type=int, default=20, help="forward-only benchmark iterations (0 = skip)")
    p.add_argument("--json", dest="json_out", help="also write the result to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    return p


def _prepare(args) -> Dict[str, Any]:
    ck_path = Path(args.checkpoint).expanduser()
    if not ck_path.is_file():
        raise C.ConfigError(f"checkpoint '{args.checkpoint}' not found")
    from .checkpoint import ema_state_dict, load
    try:
        ckpt = load(str(ck_path))
    except Exception as e:
        raise C.ConfigError(f"cannot read checkpoint '{args.checkpoint}': {e}") from None
    ours = isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict) and "model" in ckpt
    if ours and not args.config:
        cfg = C.build_config(base=ckpt["config"])
    else:
        # an official checkpoint without --config: ImageNet eval settings (224, crop_pct 0.875, bicubic,
        # mean/std from the model's pretrained_cfg)
        cfg = C.build_config(recipe=args.config) if args.config else C.build_config(base=C.DEFAULTS)
        if not ours:
            if not args.model:
                raise C.ConfigError("this checkpoint carries no config: pass --model NAME (and --data)")
            if not args.data and not args.config:
                raise C.ConfigError("this checkpoint carries no config: pass --data ROOT (ImageFolder with val/)")
    ov: Dict[str, Any] = {"model": {}, "data": {}, "train": {}}
    if args.model:
        ov["model"]["name"] = args.model
    if args.data:
        ov["data"]["root"] = args.data
    if args.split:
        ov["data"]["val_split"] = args.split
    for k, v in (("img_size", args.img_size), ("crop_pct", args.crop_pct), ("workers", args.workers)):
        if v is not None:
            ov["data"][k] = v
    for k, v in (("amp", args.amp), ("device", args.device)):
        if v is not None:
            ov["train"][k] = v
    cfg = C.merge(cfg, {k: v for k, v in ov.items() if v}, "command line")
    if args.batch_size is not None and args.batch_size < 1:
        raise C.ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.ema and not (ours and ema_state_dict(ckpt)):
        raise C.ConfigError("--ema: this checkpoint has no EMA weights")
    import vssm  # noqa: F401  (registers the vssm models in timm)
    C.check_model_name(cfg["model"]["name"])
    d = cfg["data"]
    if d["root"] is not None:
        root = Path(d["root"]).expanduser()
        if not (root / d["val_split"]).is_dir():
            raise C.ConfigError(f"data root '{d['root']}' has no '{d['val_split']}/' folder")
    return {"cfg": cfg, "ckpt": ckpt, "ours": ours}


def run(args) -> Dict[str, Any]:
    import timm
    from . import dist as D
    from .checkpoint import load_weights
    from .data import build_val_loader, resolve_norm
    from .digits import prepare_digits

    prep = _prepare(args)
    cfg, ckpt = prep["cfg"], prep["ckpt"]
    env = D.init(cfg["train"]["device"])
    if cfg["train"]["threads"]:
        torch.set_num_threads(int(cfg["train"]["threads"]))
    try:
        d = cfg["data"]
        if d["root"] is None:
            if env.is_main:
                prepare_digits(d["img_size"])
            env.barrier()
            root = prepare_digits(d["img_size"], verbose=False)
        else:
            root = Path(d["root"]).expanduser()
        val_dir = str(Path(root) / d["val_split"])
        from torchvision.datasets import ImageFolder
        n_classes = args.num_classes or len(ImageFolder(val_dir).classes)
        kwargs = dict(cfg["model"]["kwargs"])
        model = timm.create_model(cfg["model"]["name"], num_classes=n_classes, **kwargs)
        try:
            info = load_weights(model, ckpt, prefer_ema=args.ema, strict=True,
                                log=(print if env.is_main else (lambda *a: None)))
        except ValueError as e:
            raise C.ConfigError(f"{args.checkpoint}: {e} (model {cfg['model']['name']}, {n_classes} classes)") from None
        model.to(env.device)
        mean, std = resolve_norm(cfg, model)
        bs = args.batch_size or 128
        _, loader = build_val_loader(cfg, val_dir, mean, std, env.rank, env.world_size,
                                     env.device.type == "cuda", batch_size=bs)
        res = evaluate(model, loader, env, amp=cfg["train"]["amp"], progress=not args.no_progress)
        if args.throughput_iters > 0 and env.is_main:
            res["forward_img_s"] = benchmark(model, bs, d["img_size"], env.device, cfg["train"]["amp"],
                                             iters=args.throughput_iters)
        res.update({"model": cfg["model"]["name"], "weights": "ema" if args.ema else "model",
                    "checkpoint": str(args.checkpoint), "data": val_dir, "world_size": env.world_size,
                    "device": str(env.device), "amp": cfg["train"]["amp"], "missing_keys": len(info["missing"])})
        if env.is_main:
            print(f"{res['model']} ({res['weights']} weights) on {res['count']} images of {val_dir}: "
                  f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  loss {res['loss']:.4f}  "
                  f"eval {res['img_s']:.1f} img/s end-to-end"
                  + (f", {res['forward_img_s']:.1f} img/s forward-only (batch {bs})" if "forward_img_s" in res else ""))
            if args.json_out:
                Path(args.json_out).write_text(json.dumps(res, indent=1))
        return res
    finally:
        D.cleanup()


def main(argv: Optional[list] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        run(args)
    except C.ConfigError as e:
        parser.error(str(e))  # exits with status 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
