"""ImageNet-style classification training: the ``vssm-train`` CLI.

    vssm-train                                             # embedded default: small vssm on digits (CPU)
    vssm-train --config vmamba_tiny_in1k --data /imagenet  # official recipe, 1 process
    torchrun --nproc_per_node 8 -m vssm.engine.train --config vmamba_tiny_in1k --data /imagenet
    vssm-train --resume output/train/<run>/last.pth        # continue a run exactly where it stopped

Multi-node: the same command under torchrun with ``--nnodes N --node_rank i --rdzv_backend c10d
--rdzv_endpoint HOST:PORT`` (or ``--master_addr/--master_port``) on every node.

One code path serves 1 process and torchrun/DDP.  The recipe's ``train.batch_size`` is the GLOBAL batch
of one optimizer step; each rank gets batch_size / (world_size x accum_steps) per micro-step.  A checkpoint
(model, EMA, optimizer, scheduler, scaler, epoch, step, every rank's RNG state, metrics) is written
atomically after every epoch to ``last.pth``; ``--resume`` continues from it and reproduces an
uninterrupted run.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .._checkpoint import UnsafeCheckpointError
from . import config as C
from .metrics import progress_bar


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/Inf; training stops without writing another checkpoint."""


# ----------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vssm-train",
        description="Train a vssm (or any timm) classifier. With no arguments: the embedded default, a small "
                    "vssm on scikit-learn's handwritten digits on CPU.",
        epilog="Any config key can be set with --set section.key=value (YAML values), e.g. "
               "--set aug.mixup=0 --set optim.betas=[0.9,0.95]. Recipes: configs/classification/*.yaml.")
    g = p.add_argument_group("recipe and data")
    g.add_argument("--config", help="recipe YAML (path or name under configs/classification/); "
                                    "default: the built-in digits recipe")
    g.add_argument("--data", help="ImageFolder root with train/ and val/ (default: embedded digits)")
    g.add_argument("--synthetic", action="store_true", default=None,
                   help="random ImageNet-shaped tensors on the device instead of data (throughput runs)")
    g.add_argument("--img-size", type=int)
    g.add_argument("--workers", type=int)
    g = p.add_argument_group("model")
    g.add_argument("--model", help="registered model name, e.g. vmamba_tiny")
    g.add_argument("--pretrained", metavar="PATH", help="initialise from a checkpoint (ours or official)")
    g.add_argument("--drop-path", type=float, dest="drop_path_rate")
    g.add_argument("--grad-checkpointing", action="store_true", default=None)
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--batch-size", type=int, help="GLOBAL batch size per optimizer step")
    g.add_argument("--accum-steps", type=int, help="gradient accumulation steps")
    g.add_argument("--lr", type=float, help="learning rate at the recipe's lr_ref_batch")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--clip-grad", type=float)
    g.add_argument("--amp", choices=C.AMP_CHOICES)
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g.add_argument("--channels-last", action="store_true", default=None)
    g.add_argument("--no-ema", action="store_true", help="disable the EMA of weights")
    g.add_argument("--ema-decay", type=float)
    g.add_argument("--seed", type=int)
    g.add_argument("--device", choices=C.DEVICE_CHOICES)
    g.add_argument("--threads", type=int, help="torch CPU threads per process")
    g.add_argument("--max-steps-per-epoch", type=int, help="cap optimizer steps per epoch (smoke runs)")
    g = p.add_argument_group("distillation (DeiT / GroupMamba)")
    g.add_argument("--teacher", help="frozen teacher model name (enables distillation)")
    g.add_argument("--teacher-checkpoint", metavar="PATH", help="teacher weights (local file)")
    g.add_argument("--distill-type", choices=("hard", "soft", "none"))
    g.add_argument("--distill-alpha", type=float)
    g.add_argument("--distill-tau", type=float)
    g = p.add_argument_group("output")
    g.add_argument("--output", help="run directory (default: output/train/<model>-<data>-<time>)")
    g.add_argument("--resume", metavar="CKPT", help="checkpoint to continue from, or 'auto' for <output>/last.pth")
    g.add_argument("--keep-epochs", type=int, help="also keep checkpoint-<epoch>.pth of the last N epochs")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-plot", action="store_true")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    g.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    return p


def _flag_overrides(args) -> Dict[str, Any]:
    ov: Dict[str, Dict[str, Any]] = {s: {} for s in ("model", "data", "optim", "sched", "train", "ema", "output",
                                                     "distill")}

    def put(sec, key, val):
        if val is not None:
            ov[sec][key] = val

    put("data", "synthetic", args.synthetic); put("data", "root", args.data); put("data", "img_size", args.img_size); put("data", "workers", args.workers)
    put("model", "name", args.model); put("model", "pretrained", args.pretrained)
    put("model", "drop_path_rate", args.drop_path_rate); put("model", "grad_checkpointing", args.grad_checkpointing)
    put("sched", "epochs", args.epochs); put("sched", "warmup_epochs", args.warmup_epochs)
    put("train", "batch_size", args.batch_size); put("train", "accum_steps", args.accum_steps)
    put("optim", "lr", args.lr); put("optim", "weight_decay", args.weight_decay); put("optim", "clip_grad", args.clip_grad)
    put("train", "amp", args.amp); put("train", "compile", args.compile); put("train", "channels_last", args.channels_last)
    put("train", "seed", args.seed); put("train", "device", args.device); put("train", "threads", args.threads)
    put("train", "max_steps_per_epoch", args.max_steps_per_epoch)
    put("ema", "decay", args.ema_decay)
    put("distill", "teacher", args.teacher); put("distill", "teacher_checkpoint", args.teacher_checkpoint)
    put("distill", "kind", args.distill_type); put("distill", "alpha", args.distill_alpha)
    put("distill", "tau", args.distill_tau)
    if args.no_ema:
        ov["ema"]["enabled"] = False
    put("output", "dir", args.output); put("output", "keep_epochs", args.keep_epochs)
    if args.no_progress:
        ov["output"]["progress"] = False
    if args.no_plot:
        ov["output"]["plot"] = False
    return {k: v for k, v in ov.items() if v}


def resolve_args(args) -> Dict[str, Any]:
    """Effective config + resume checkpoint path from parsed args.  Raises ConfigError; does no work."""
    overrides = [_flag_overrides(args), C.parse_set(args.set)]
    resume = None
    if args.resume:
        if args.resume == "auto":
            if not args.output:
                raise C.ConfigError("--resume auto needs --output DIR (the run directory holding last.pth)")
            resume = Path(args.output).expanduser() / "last.pth"
            if not resume.is_file():
                resume = None  # nothing to resume yet: start fresh in that directory
        else:
            resume = Path(args.resume).expanduser()
            if not resume.is_file():
                raise C.ConfigError(f"--resume: checkpoint '{args.resume}' not found")
    base = None
    if resume is not None and not args.config:
        from .checkpoint import load
        try:
            ck_cfg = load(str(resume)).get("config")
        except Exception as e:
            raise C.ConfigError(f"--resume: cannot read checkpoint '{resume}': {e}") from None
        if not isinstance(ck_cfg, dict):
            raise C.ConfigError(f"--resume: '{resume}' is not a vssm training checkpoint (no config inside)")
        base = C.merge(C.DEFAULTS, ck_cfg, f"config stored in {resume}")
        if not args.output:
            overrides.append({"output": {"dir": str(resume.parent)}})
    cfg = C.build_config(recipe=args.config, overrides=overrides, base=base)
    return {"cfg": cfg, "resume": str(resume) if resume else None}


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def _autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _param_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for name, p in model.state_dict().items():
        if torch.is_tensor(p):
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _make_run_dir(cfg: Dict[str, Any]) -> Path:
    o = cfg["output"]
    if o["dir"]:
        return Path(o["dir"]).expanduser()
    data = ("synthetic" if cfg["data"]["synthetic"] else "digits" if cfg["data"]["root"] is None
            else (Path(cfg["data"]["root"]).name or "data"))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(o["root"]).expanduser() / f"{cfg['model']['name']}-{data}-{stamp}"


def _fmt_time(s: float) -> str:
    m, s = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ----------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------
def train(cfg: Dict[str, Any], resume: Optional[str] = None) -> Dict[str, Any]:
    """Run training for an already-resolved config.  Validates it first (ConfigError before any work)."""
    import numpy as np
    import random
    import timm
    from timm.utils import ModelEmaV3

    import vssm  # noqa: F401  (registers the vssm models in timm)
    from . import checkpoint as CK
    from . import data as DM
    from . import dist as D
    from .digits import prepare_digits
    from .metrics import MetricsLog, plot_curves, read_steps
    from .optim import build_optimizer, build_scheduler, effective_lr
    from .validate import evaluate

    C.validate_config(cfg)
    t_start = time.time()
    threads_before = torch.get_num_threads()
    env = D.init(cfg["train"]["device"])
    log = print if env.is_main else (lambda *a, **k: None)
    try:
        t, m, d = cfg["train"], cfg["model"], cfg["data"]
        dev = env.device
        if t["threads"]:
            torch.set_num_threads(int(t["threads"]))   # restored in the finally below
        seed = int(t["seed"])
        random.seed(seed); np.random.seed(seed); torch.manual_seed(seed)   # same model init on all ranks

        # --- output dir (rank 0 decides) and data -------------------------------------------------
        out_dir = Path(env.broadcast_object(str(_make_run_dir(cfg)) if env.is_main else None))
        synthetic = bool(d["synthetic"])
        if synthetic:
            data_root, n_classes = Path("synthetic"), int(d["synthetic_classes"])
        else:
            if d["root"] is None:
                if env.is_main:
                    prepare_digits(d["img_size"])
                env.barrier()
                data_root = prepare_digits(d["img_size"], verbose=False)
            else:
                data_root = Path(d["root"]).expanduser()
            train_dir, val_dir = str(Path(data_root) / d["train_split"]), str(Path(data_root) / d["val_split"])
            from torchvision.datasets.folder import find_classes
            n_classes = len(find_classes(train_dir)[0])

        # --- model ----------------------------------------------------------------------------------
        mk = dict(m["kwargs"])
        if m["drop_path_rate"] is not None:
            mk["drop_path_rate"] = m["drop_path_rate"]
        if m["drop_rate"] is not None:
            mk["drop_rate"] = m["drop_rate"]
        model = timm.create_model(m["name"], num_classes=n_classes, **mk)
        if m["pretrained"]:
            try:
                pretrained = CK.load(m["pretrained"])
            except UnsafeCheckpointError as e:
                raise C.ConfigError(f"--pretrained: {e}") from None
            CK.load_weights(model, pretrained, log=log)
        if m["grad_checkpointing"]:
            if not hasattr(model, "set_grad_checkpointing"):
                raise C.ConfigError(f"model {m['name']} does not support gradient checkpointing")
            model.set_grad_checkpointing(True)
        model.to(dev)
        if t["channels_last"]:
            model.to(memory_format=torch.channels_last)
        n_params = sum(p.numel() for p in model.parameters())

        # --- data loaders -----------------------------------------------------------------------------
        micro = C.per_rank_batch(cfg, env.world_size)
        val_bs = t["val_batch_size"] or 2 * micro
        if synthetic:
            train_loader = DM.SyntheticLoader(d["synthetic_train_size"], micro, d["img_size"], n_classes, dev,
                                              seed, env.rank, env.world_size)
            val_loader = DM.SyntheticLoader(d["synthetic_val_size"], val_bs, d["img_size"], n_classes, dev,
                                            seed + 1, env.rank, env.world_size, drop_last=False)
            train_ds = train_loader.dataset
        else:
            mean, std = DM.resolve_norm(cfg, model)
            train_ds, train_loader = DM.build_train_loader(cfg, train_dir, mean, std, env.rank, env.world_size,
                                                           dev.type == "cuda")
            _, val_loader = DM.build_val_loader(cfg, val_dir, mean, std, env.rank, env.world_size,
                                                dev.type == "cuda", batch_size=val_bs)
        accum = t["accum_steps"]
        updates_per_epoch = len(train_loader) // accum
        if t["max_steps_per_epoch"]:
            updates_per_epoch = min(updates_per_epoch, t["max_steps_per_epoch"])
        if updates_per_epoch < 1:
            raise C.ConfigError(f"the train split has {len(train_ds)} images, fewer than one global batch "
                                f"({t['batch_size']}); lower --batch-size")
        mixup, criterion = DM.build_mixup_and_criterion(cfg, n_classes)
        criterion = _wrap_distill(cfg, criterion, n_classes, dev, log)
        if criterion.teacher is not None and hasattr(model, "set_distilled_training"):
            model.set_distilled_training(True)  # training forward returns (logits, dist_logits), as timm's DeiT

        # --- EMA, optimizer, schedule, scaler ----------------------------------------------------------
        ema = ModelEmaV3(model, decay=cfg["ema"]["decay"], use_warmup=cfg["ema"]["warmup"]) if cfg["ema"]["enabled"] else None
        lr = effective_lr(cfg)
        optimizer = build_optimizer(model, cfg, lr)
        scheduler = build_scheduler(optimizer, cfg, updates_per_epoch)
        scaler = torch.amp.GradScaler(dev.type, enabled=(t["amp"] == "fp16"))

        # --- resume ---------------------------------------------------------------------------------
        start_epoch, global_step, history, best = 0, 0, [], {"top1": -1.0, "epoch": 0}
        ck = None
        if resume:
            ck = CK.load(resume)
            model.load_state_dict(ck["model"])
            if ema is not None:
                ema.module.load_state_dict(CK.ema_state_dict(ck) or ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["scheduler"])
            if ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            start_epoch, global_step = int(ck["epoch"]), int(ck["step"])
            history, best = list(ck.get("history", [])), dict(ck.get("best", best))
            scheduler.step_update(global_step)
            log(f"resumed from {resume}: epoch {start_epoch} done, step {global_step}; continuing at step {global_step + 1}")

        model_core = model
        if t["compile"]:
            # static shapes (train and val batches compile separately; dynamic shapes hit an inductor
            # assertion on VMamba with torch 2.11); per-block guards (e.g. each block's drop-path rate)
            # need more than dynamo's default 8 recompiles before it falls back to eager
            import torch._dynamo as dynamo
            dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, 64)
            dynamo.config.accumulated_recompile_limit = max(dynamo.config.accumulated_recompile_limit, 1024)
            model.compile(dynamic=False)
        if env.distributed:
            ddp_kw = {"device_ids": [dev.index]} if dev.type == "cuda" else {}
            if m["grad_checkpointing"]:
                ddp_kw["static_graph"] = True  # re-entrant activation checkpointing under DDP
            model = torch.nn.parallel.DistributedDataParallel(model, **ddp_kw)

        # per-rank RNG streams (drop path, mixup): restored exactly on resume, else seeded by rank
        if ck is not None and isinstance(ck.get("rng"), list) and len(ck["rng"]) == env.world_size:
            CK.set_rng_state(ck["rng"][env.rank])
        else:
            s2 = seed + 1000 * env.rank + 7919 * start_epoch + 1
            random.seed(s2); np.random.seed(s2 % 2 ** 32); torch.manual_seed(s2)
        del ck

        metrics = MetricsLog(out_dir, history)
        if env.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            CK.atomic_write_text(C.dump(cfg), out_dir / "config.yaml")
            metrics.truncate_steps(global_step)
        env.barrier()
        steps_f = metrics.open_steps() if env.is_main else None

        log(f"model {m['name']} ({n_params / 1e6:.2f}M params, {n_classes} classes) on {dev}"
            f"{f' x {env.world_size} ranks' if env.distributed else ''}; data {data_root} "
            f"({len(train_ds)} train / {len(val_loader.dataset)} val); global batch {t['batch_size']} "
            f"= {env.world_size} x {micro} x {accum} accum; lr {lr:.3g}; {cfg['sched']['epochs']} epochs x "
            f"{updates_per_epoch} steps; amp {t['amp']}; output {out_dir}")

        epochs = cfg["sched"]["epochs"]
        for epoch in range(start_epoch + 1, epochs + 1):
            row, global_step = _train_one_epoch(
                cfg, env, model, model_core, ema, optimizer, scheduler, scaler, mixup, criterion, train_loader,
                epoch, epochs, global_step, updates_per_epoch, steps_f, out_dir)
            res = evaluate(model_core, val_loader, env, amp=t["amp"], channels_last=t["channels_last"])
            row.update({"val_loss": res["loss"], "top1": res["top1"], "top5": res["top5"]})
            if ema is not None:
                r2 = evaluate(ema.module, val_loader, env, amp=t["amp"], channels_last=t["channels_last"])
                row.update({"ema_val_loss": r2["loss"], "ema_top1": r2["top1"], "ema_top5": r2["top5"]})
            if env.distributed:
                digests = env.all_gather_object(_param_digest(model_core))
                row["ranks_in_sync"] = len(set(digests)) == 1
                if not row["ranks_in_sync"]:
                    log(f"WARNING: model weights differ across ranks after epoch {epoch}: {digests}")
            rngs = env.all_gather_object(CK.rng_state())
            improved = row["top1"] > best["top1"]
            if improved:
                best = {"top1": row["top1"], "epoch": epoch}
            if env.is_main:
                metrics.add_epoch(row)
                # timm's conventions: EMA weights under state_dict_ema (timm's load_checkpoint(use_ema=True),
                # validate.py --use-ema); files before this change hold them under "ema" (read by CK.ema_state_dict)
                ckpt = {"model": model_core.state_dict(),
                        "state_dict_ema": ema.module.state_dict() if ema is not None else None,
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "scaler": scaler.state_dict(), "epoch": epoch, "step": global_step, "rng": rngs,
                        "config": cfg, "history": metrics.history, "best": best,
                        "meta": {"world_size": env.world_size, "torch": str(torch.__version__), "time": time.time()}}
                CK.atomic_save(ckpt, out_dir / "last.pth")
                if improved:
                    _atomic_copy(out_dir / "last.pth", out_dir / "best.pth")
                keep = cfg["output"]["keep_epochs"]
                if keep:
                    _atomic_copy(out_dir / "last.pth", out_dir / f"checkpoint-{epoch:04d}.pth")
                    old = out_dir / f"checkpoint-{epoch - keep:04d}.pth"
                    if old.exists():
                        old.unlink()
                ema_txt = f" | EMA top-1 {row['ema_top1']:.2f}" if ema is not None else ""
                line = (f"epoch {epoch}/{epochs}  train loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
                        f"top-1 {row['top1']:.2f}  top-5 {row['top5']:.2f}{ema_txt}  "
                        f"({row['train_img_s']:.0f} img/s, {_fmt_time(row['epoch_time_s'])})")
                print(line, flush=True)
                with open(out_dir / "log.txt", "a") as f:
                    f.write(line + "\n")
            env.barrier()
        if steps_f is not None:
            steps_f.close()

        wall = time.time() - t_start
        hist = metrics.history
        if env.is_main and cfg["output"]["plot"] and hist:
            try:
                plot_curves(hist, read_steps(out_dir / "train_steps.csv"), out_dir / "curves.png",
                            title=f"{m['name']} on {Path(str(data_root)).name}")
            except Exception as e:  # a plotting problem must not lose a finished run
                log(f"plot failed: {e}")
        final = hist[-1] if hist else {}
        if env.is_main and hist:
            ema_txt = f", EMA top-1 {final['ema_top1']:.2f}%" if final.get("ema_top1") is not None else ""
            print(f"done: top-1 {final['top1']:.2f}% (best {best['top1']:.2f}% @ epoch {best['epoch']}){ema_txt}; "
                  f"wall {_fmt_time(wall)}; checkpoints, config.yaml, metrics.csv/json, curves.png in {out_dir}",
                  flush=True)
        return {"out_dir": str(out_dir), "history": hist, "final": final, "best": best, "wall_s": wall,
                "step": global_step, "rank": env.rank, "world_size": env.world_size}
    finally:
        torch.set_num_threads(threads_before)
        D.cleanup()


def _wrap_distill(cfg, criterion, n_classes, device, log):
    """Always a DistillationLoss (tuple-safe); with a teacher it adds the DeiT/GroupMamba term."""
    from .distill import DistillationLoss, build_teacher
    k = cfg["distill"]
    if not k["teacher"] or k["kind"] == "none":
        return DistillationLoss(criterion, None, kind="none")
    teacher = build_teacher(k["teacher"], k["teacher_checkpoint"], num_classes=n_classes, device=device, log=log)
    log(f"distillation: {k['kind']} from teacher {k['teacher']} (alpha {k['alpha']}, tau {k['tau']})")
    return DistillationLoss(criterion, teacher, kind=k["kind"], alpha=k["alpha"], tau=k["tau"])


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _train_one_epoch(cfg, env, model, model_core, ema, optimizer, scheduler, scaler, mixup, criterion, loader,
                     epoch, epochs, global_step, updates, steps_f, out_dir):
    t, dev = cfg["train"], env.device
    accum, amp = t["accum_steps"], t["amp"]
    clip = cfg["optim"]["clip_grad"]
    model.train()
    loader.sampler.set_epoch(epoch)
    bar = None
    if cfg["output"]["progress"] and env.is_main:
        bar = progress_bar(total=updates, desc=f"epoch {epoch}/{epochs}", leave=True)
    params = [p for p in model_core.parameters() if p.requires_grad]
    loss_sum, n_upd, t0 = 0.0, 0, time.perf_counter()
    upd_loss = torch.zeros((), dtype=torch.float64, device=dev)
    optimizer.zero_grad(set_to_none=True)
    it = iter(loader)
    try:
        for u in range(updates):
            upd_loss.zero_()
            for k in range(accum):
                images, target = next(it)
                images = images.to(dev, non_blocking=True)
                target = target.to(dev, non_blocking=True)
                if mixup is not None:
                    images, target = mixup(images, target)
                if t["channels_last"]:
                    images = images.contiguous(memory_format=torch.channels_last)
                last = k == accum - 1
                sync = contextlib.nullcontext() if (last or not env.distributed) else model.no_sync()
                with sync:
                    with _autocast(dev, amp):
                        out = model(images)
                        # tuple-safe (distilled students return (logits, dist_logits)); the teacher, if any,
                        # labels the same mixed images under the same autocast
                        loss = criterion(images, out, target)
                    scaler.scale(loss / accum).backward()
                upd_loss += loss.detach().double() / accum
            # one all-reduce per step: logging value, and every rank sees the same non-finite verdict
            env.all_reduce_sum(upd_loss)
            step_loss = upd_loss.item() / env.world_size
            step_no = global_step + 1
            if not math.isfinite(step_loss):
                raise NonFiniteLossError(
                    f"non-finite training loss ({step_loss}) at global step {step_no} (epoch {epoch}, step "
                    f"{u + 1}/{updates}, lr {optimizer.param_groups[0]['lr']:.3g}); stopping. Last good checkpoint: "
                    f"{out_dir / 'last.pth'} (written after epoch {epoch - 1}) if it exists. "
                    f"Try a lower --lr, --clip-grad, or --amp bf16/none.")
            gnorm = None
            if clip:
                scaler.unscale_(optimizer)
                gnorm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            lr_now = optimizer.param_groups[0]["lr"]
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            global_step = step_no
            scheduler.step_update(global_step)
            if ema is not None:
                ema.update(model_core, step=global_step)
            loss_sum += step_loss
            n_upd += 1
            if steps_f is not None:
                steps_f.write(f"{global_step},{epoch},{u + 1},{step_loss:.6g},{lr_now:.6g},"
                              f"{'' if gnorm is None else f'{gnorm:.4g}'}\n")
            if bar is not None:
                el = time.perf_counter() - t0
                bar.set_postfix_str(f"loss {step_loss:.4f} (avg {loss_sum / n_upd:.4f}) lr {lr_now:.2e} "
                                    f"{n_upd * t['batch_size'] / max(el, 1e-9):.0f} img/s", refresh=False)
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elapsed = time.perf_counter() - t0
    row = {"epoch": epoch, "step": global_step, "lr": optimizer.param_groups[0]["lr"],
           "train_loss": loss_sum / max(n_upd, 1), "epoch_time_s": elapsed,
           "train_img_s": n_upd * t["batch_size"] / max(elapsed, 1e-9)}
    if dev.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
    return row, global_step


# ----------------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        r = resolve_args(args)
        if args.print_config:
            import vssm  # noqa: F401
            C.validate_config(r["cfg"])
            print(C.dump(r["cfg"]), end="")
            return 0
        train(r["cfg"], r["resume"])
    except C.ConfigError as e:
        parser.error(str(e))  # prints usage + message, exit status 2
    except NonFiniteLossError as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"vssm-train: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("vssm-train: interrupted; the last completed epoch is in last.pth (resume with --resume)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
