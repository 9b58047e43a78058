"""ImageNet-style classification training: the ``vssm-train`` CLI.

    vssm-train                                             # embedded default: small vssm on digits (CPU)
    vssm-train --config vmamba_tiny_in1k --data /imagenet  # official recipe, 1 process
    torchrun --nproc_per_node 8 -m vssm.engine.train --config vmamba_tiny_in1k --data /imagenet
    vssm-train --resume output/train/<run>/last.pth        # continue a run exactly where it stopped
    vssm-train --resume auto --output output/train/<run>   # the newest of its recovery.pth / last.pth

Multi-node: the same command under torchrun with ``--nnodes N --node_rank i --rdzv_backend c10d
--rdzv_endpoint HOST:PORT`` (or ``--master_addr/--master_port``) on every node.

One code path serves 1 process and torchrun/DDP.  The recipe's ``train.batch_size`` is the GLOBAL batch
of one optimizer step; each rank gets batch_size / (world_size x accum_steps) per micro-step.  A checkpoint
(model, EMA, optimizer, scheduler, scaler, epoch, step, every rank's RNG state, metrics) is written
atomically after every epoch to ``last.pth``, and with ``--recovery-interval N`` every N optimizer steps
inside an epoch to ``recovery.pth``; ``--resume`` continues from either and reproduces an uninterrupted run.

A run is :func:`setup` (a :class:`Run`), then per epoch :func:`train_one_epoch`, :func:`evaluate_epoch` and
:func:`save_epoch`, then :func:`finish`.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from timm.utils import ModelEmaV3, reduce_tensor

from .._checkpoint import UnsafeCheckpointError
from . import checkpoint
from . import config
from . import data
from . import dist
from .config import Config, ConfigError
from .metrics import MetricsLog, plot_curves, progress_bar, read_steps, setup_logging

_logger = logging.getLogger("vssm.engine.train")  # also when run as __main__
RECOVERY = "recovery.pth"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN/Inf; training stops without writing another checkpoint."""


# ----------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vssm-train",
        description="Train a vssm (or any timm) classifier. With no arguments: the embedded default, a small "
                    "vssm on scikit-learn's handwritten digits on CPU.",
        epilog="Any config key can be set with --set section.key=value (YAML values), e.g. "
               "--set aug.mixup=0 --set optim.betas=[0.9,0.95]. Recipes: configs/classification/*.yaml.")
    parser.add_argument("--config", help="recipe YAML (path or name under configs/classification/); "
                                         "default: the digits recipe digits_vmamba_nano")
    config.add_flags(parser)
    group = parser.add_argument_group("run")
    group.add_argument("--resume", metavar="CKPT", help="checkpoint to continue from (last.pth, recovery.pth), or "
                                                        "'auto': the newer of the two in --output")
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    group.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    return parser


def _resume_path(args) -> Optional[Path]:
    if not args.resume:
        return None
    if args.resume == "auto":
        run_dir = getattr(args, "output.dir")
        if not run_dir:
            raise ConfigError("--resume auto needs --output DIR (the run directory holding last.pth)")
        found = [p for p in (Path(run_dir).expanduser() / n for n in ("last.pth", RECOVERY)) if p.is_file()]
        return max(found, key=lambda p: p.stat().st_mtime) if found else None  # none yet: start fresh there
    path = Path(args.resume).expanduser()
    if not path.is_file():
        raise ConfigError(f"--resume: checkpoint '{args.resume}' not found")
    return path


def resolve_args(args) -> Dict[str, Any]:
    """Effective config + resume checkpoint path from parsed args.  Raises ConfigError; does no work."""
    overrides = [config.flag_overrides(args), config.parse_set(args.set)]
    resume, base = _resume_path(args), None
    if resume is not None and not args.config:
        try:
            base = checkpoint.load(str(resume)).get("config")
        except Exception as e:
            raise ConfigError(f"--resume: cannot read checkpoint '{resume}': {e}") from None
        if not isinstance(base, dict):
            raise ConfigError(f"--resume: '{resume}' is not a vssm training checkpoint (no config inside)")
        if not getattr(args, "output.dir"):
            overrides.append({"output": {"dir": str(resume.parent)}})
    cfg = config.build_config(recipe=args.config, overrides=overrides, base=base)
    return {"cfg": cfg, "resume": str(resume) if resume else None}


# ----------------------------------------------------------------------------------------------------
# set-up
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Run:
    """Everything one training run holds between its steps."""
    cfg: Config
    env: dist.DistEnv
    out_dir: Path
    model: torch.nn.Module             # what the step calls: the DDP / compiled wrapper, if any
    model_core: torch.nn.Module        # its parameters' owner: evaluated, averaged into the EMA, saved
    ema: Optional[ModelEmaV3]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    mixup: Any
    criterion: torch.nn.Module
    train_loader: Any
    val_loader: Any
    updates_per_epoch: int
    metrics: MetricsLog
    steps_file: Any = None
    epoch: int = 0                     # epochs completed
    step: int = 0                      # optimizer steps completed
    best: Dict[str, Any] = dataclasses.field(default_factory=lambda: {"top1": -1.0, "epoch": 0})
    partial_epoch: Optional[Dict[str, Any]] = None   # progress inside epoch + 1 (resumed from recovery.pth)
    data_name: str = ""
    t_start: float = dataclasses.field(default_factory=time.time)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _run_dir(cfg: Config) -> Path:
    if cfg.output.dir:
        return Path(cfg.output.dir).expanduser()
    name = ("synthetic" if cfg.data.synthetic else "digits" if cfg.data.root is None
            else (Path(cfg.data.root).name or "data"))
    return Path(cfg.output.root).expanduser() / f"{cfg.model.name}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _data_root(cfg: Config, env: dist.DistEnv) -> Path:
    if cfg.data.root is not None:
        return Path(cfg.data.root).expanduser()
    from .digits import prepare_digits
    if env.is_main:
        prepare_digits(cfg.data.img_size)
    env.barrier()
    return prepare_digits(cfg.data.img_size, verbose=False)


def build_model(cfg: Config, num_classes: int) -> torch.nn.Module:
    import timm
    m = cfg.model
    kwargs = dict(m.kwargs, **{k: v for k, v in (("drop_path_rate", m.drop_path_rate), ("drop_rate", m.drop_rate))
                               if v is not None})
    model = timm.create_model(m.name, num_classes=num_classes, **kwargs)
    if m.pretrained:
        try:
            checkpoint.load_weights(model, checkpoint.load(m.pretrained))
        except UnsafeCheckpointError as e:
            raise ConfigError(f"--pretrained: {e}") from None
    if m.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise ConfigError(f"model {m.name} does not support gradient checkpointing")
        model.set_grad_checkpointing(True)
    return model


def _build_loaders(cfg: Config, env: dist.DistEnv, model: torch.nn.Module, root: Optional[Path]):
    micro = config.per_rank_batch(cfg, env.world_size)
    val_batch = cfg.train.val_batch_size or 2 * micro
    if root is None:
        d = cfg.data
        loaders = [data.SyntheticLoader(size, batch, d.img_size, d.synthetic_classes, env.device, seed, env.rank,
                                        env.world_size, drop_last)
                   for size, batch, seed, drop_last in ((d.synthetic_train_size, micro, cfg.train.seed, True),
                                                        (d.synthetic_val_size, val_batch, cfg.train.seed + 1, False))]
        return loaders
    mean, std = data.resolve_norm(cfg, model)
    cuda = env.device.type == "cuda"
    _, train_loader = data.build_train_loader(cfg, str(root / cfg.data.train_split), mean, std, env.rank,
                                              env.world_size, cuda)
    _, val_loader = data.build_val_loader(cfg, str(root / cfg.data.val_split), mean, std, env.rank, env.world_size,
                                          cuda, batch_size=val_batch)
    return [train_loader, val_loader]


def _build_criterion(cfg: Config, num_classes: int, env: dist.DistEnv, model: torch.nn.Module):
    """timm's mixup and loss, always inside a DistillationLoss (tuple-safe); with a teacher it adds the
    DeiT/GroupMamba term and the student returns (logits, dist_logits) in training, as timm's DeiT."""
    from .distill import DistillationLoss, build_teacher
    mixup, criterion = data.build_mixup_and_criterion(cfg, num_classes)
    k = cfg.distill
    if not k.teacher or k.kind == "none":
        return mixup, DistillationLoss(criterion, None, kind="none")
    teacher = build_teacher(k.teacher, k.teacher_checkpoint, num_classes=num_classes, device=env.device)
    _logger.info(f"distillation: {k.kind} from teacher {k.teacher} (alpha {k.alpha}, tau {k.tau})")
    if hasattr(model, "set_distilled_training"):
        model.set_distilled_training(True)
    return mixup, DistillationLoss(criterion, teacher, kind=k.kind, alpha=k.alpha, tau=k.tau)


def _wrap(cfg: Config, env: dist.DistEnv, model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile and DDP around the model (after its state is restored)."""
    if cfg.train.compile:
        # static shapes (train and val batches compile separately; dynamic shapes hit an inductor
        # assertion on VMamba with torch 2.11); per-block guards (e.g. each block's drop-path rate)
        # need more than dynamo's default 8 recompiles before it falls back to eager
        import torch._dynamo as dynamo
        dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, 64)
        dynamo.config.accumulated_recompile_limit = max(dynamo.config.accumulated_recompile_limit, 1024)
        model.compile(dynamic=False)
    if not env.distributed:
        return model
    ddp_kwargs = {"device_ids": [env.device.index]} if env.device.type == "cuda" else {}
    if cfg.model.grad_checkpointing:
        ddp_kwargs["static_graph"] = True  # re-entrant activation checkpointing under DDP
    return torch.nn.parallel.DistributedDataParallel(model, **ddp_kwargs)


def _restore(run: Run, ck: Dict[str, Any]) -> None:
    """Model, EMA, optimizer, schedule, scaler, counters and metrics from a checkpoint of ours."""
    run.model_core.load_state_dict(checkpoint.extract_state_dict(ck))
    if run.ema is not None:
        run.ema.module.load_state_dict(checkpoint.ema_state_dict(ck) or checkpoint.extract_state_dict(ck))
    run.optimizer.load_state_dict(ck["optimizer"])
    run.scheduler.load_state_dict(ck["scheduler"])
    if ck.get("scaler"):
        run.scaler.load_state_dict(ck["scaler"])
    run.epoch, run.step = int(ck["epoch"]), int(ck["step"])
    run.metrics.history, run.best = list(ck.get("history", [])), dict(ck.get("best", run.best))
    run.partial_epoch = ck.get("partial_epoch")
    run.scheduler.step_update(run.step)
    _logger.info(f"resumed: epoch {run.epoch} done, step {run.step}"
                 + (f" ({run.partial_epoch['steps']} steps into epoch {run.epoch + 1})" if run.partial_epoch else "")
                 + f"; continuing at step {run.step + 1}")


def setup(cfg: Config, env: dist.DistEnv, resume: Optional[str] = None) -> Run:
    """Data, model, optimizer, schedule, EMA (restored from ``resume``), DDP, RNG streams and output files."""
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)   # restored by train()
    _seed_all(t.seed)                      # the same model init on all ranks
    out_dir = Path(env.broadcast_object(str(_run_dir(cfg)) if env.is_main else None))
    root = None if cfg.data.synthetic else _data_root(cfg, env)
    if root is None:
        num_classes = cfg.data.synthetic_classes
    else:
        from torchvision.datasets.folder import find_classes
        num_classes = len(find_classes(str(root / cfg.data.train_split))[0])
    model = build_model(cfg, num_classes)
    mixup, criterion = _build_criterion(cfg, num_classes, env, model)
    model.to(env.device)
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    train_loader, val_loader = _build_loaders(cfg, env, model, root)
    updates = min(len(train_loader) // t.accum_steps, t.max_steps_per_epoch or math.inf)
    if updates < 1:
        raise ConfigError(f"the train split has {len(train_loader.dataset)} images, fewer than one global batch "
                          f"({t.batch_size}); lower --batch-size")
    from .optim import build_optimizer, build_scheduler, effective_lr
    optimizer = build_optimizer(model, cfg, effective_lr(cfg))
    run = Run(cfg=cfg, env=env, out_dir=out_dir, model=model, model_core=model,
              ema=ModelEmaV3(model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup) if cfg.ema.enabled else None,
              optimizer=optimizer, scheduler=build_scheduler(optimizer, cfg, updates),
              scaler=torch.amp.GradScaler(env.device.type, enabled=t.amp == "fp16"), mixup=mixup,
              criterion=criterion, train_loader=train_loader, val_loader=val_loader, updates_per_epoch=updates,
              metrics=MetricsLog(out_dir), data_name=Path(str(root or "synthetic")).name)
    ck = checkpoint.load(resume) if resume else None
    if ck is not None:
        _restore(run, ck)
    run.model = _wrap(cfg, env, model)
    # per-rank RNG streams (drop path, mixup): restored exactly on resume, else seeded by rank
    if ck is not None and isinstance(ck.get("rng"), list) and len(ck["rng"]) == env.world_size:
        checkpoint.set_rng_state(ck["rng"][env.rank])
    else:
        _seed_all(t.seed + 1000 * env.rank + 7919 * run.epoch + 1)
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        setup_logging(True, out_dir / "log.txt")
        checkpoint.atomic_write_text(config.dump(dataclasses.asdict(cfg)), out_dir / "config.yaml")
        run.metrics.truncate_steps(run.step)
        run.steps_file = run.metrics.open_steps()
    env.barrier()
    micro = config.per_rank_batch(cfg, env.world_size)
    n_params = sum(p.numel() for p in model.parameters())
    _logger.info(
        f"model {cfg.model.name} ({n_params / 1e6:.2f}M params, {num_classes} classes) on {env.device}"
        f"{f' x {env.world_size} ranks' if env.distributed else ''}; data {root or 'synthetic'} "
        f"({len(train_loader.dataset)} train / {len(val_loader.dataset)} val); global batch {t.batch_size} "
        f"= {env.world_size} x {micro} x {t.accum_steps} accum; lr {effective_lr(cfg):.3g}; {cfg.sched.epochs} "
        f"epochs x {updates} steps; amp {t.amp}; output {out_dir}")
    return run


# ----------------------------------------------------------------------------------------------------
# one epoch, evaluation, checkpoints
# ----------------------------------------------------------------------------------------------------
def _state(run: Run, rngs: List[Dict[str, Any]], **extra) -> Dict[str, Any]:
    """A checkpoint in timm's keys (state_dict, state_dict_ema, optimizer, epoch, arch, metric) plus what exact
    resume needs; the weights also under 'model' (read by older vssm versions; the same tensors, stored once)."""
    weights = run.model_core.state_dict()
    return {"state_dict": weights, "model": weights, "arch": run.cfg.model.name,
            "state_dict_ema": run.ema.module.state_dict() if run.ema is not None else None,
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(), "epoch": run.epoch, "step": run.step, "rng": rngs,
            "config": dataclasses.asdict(run.cfg), "history": run.metrics.history, "best": run.best,
            "metric": run.best["top1"],
            "meta": {"world_size": run.env.world_size, "torch": str(torch.__version__), "time": time.time()},
            **extra}


def save_recovery(run: Run, progress: Dict[str, Any]) -> None:
    """``recovery.pth``: the state after ``progress['steps']`` optimizer steps of epoch ``run.epoch + 1``."""
    rngs = run.env.all_gather_object(checkpoint.rng_state())   # collective: every rank calls this
    if run.env.is_main:
        checkpoint.atomic_save(_state(run, rngs, partial_epoch=progress), run.out_dir / RECOVERY)


def _step(run: Run, batches, step_loss: torch.Tensor, params: List[torch.nn.Parameter]) -> Optional[float]:
    """One optimizer step over ``accum_steps`` micro-batches; returns the gradient norm (None: no clipping)."""
    t, device = run.cfg.train, run.env.device
    step_loss.zero_()
    for k in range(t.accum_steps):
        images, target = next(batches)
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if run.mixup is not None:
            images, target = run.mixup(images, target)
        if t.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        last = k == t.accum_steps - 1
        with contextlib.nullcontext() if last or not run.env.distributed else run.model.no_sync():
            with dist.autocast(device, t.amp):
                # tuple-safe (distilled students return (logits, dist_logits)); the teacher, if any,
                # labels the same mixed images under the same autocast
                loss = run.criterion(images, run.model(images), target)
            run.scaler.scale(loss / t.accum_steps).backward()
        step_loss += loss.detach().double() / t.accum_steps
    # one all-reduce per step: the logged value, and every rank sees the same non-finite verdict
    mean_loss = reduce_tensor(step_loss, run.env.world_size) if run.env.distributed else step_loss
    if not math.isfinite(mean_loss.item()):
        epoch, last_good = run.epoch + 1, run.out_dir / "last.pth"
        raise NonFiniteLossError(
            f"non-finite training loss ({mean_loss.item()}) at global step {run.step + 1} (epoch {epoch}, lr "
            f"{run.optimizer.param_groups[0]['lr']:.3g}); stopping. Last good checkpoint: {last_good} (written after "
            f"epoch {epoch - 1}) if it exists. Try a lower --lr, --clip-grad, or --amp bf16/none.")
    step_loss.copy_(mean_loss)
    grad_norm = None
    if run.cfg.optim.clip_grad:
        run.scaler.unscale_(run.optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, run.cfg.optim.clip_grad))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    run.scheduler.step_update(run.step)
    if run.ema is not None:
        run.ema.update(run.model_core, step=run.step)
    return grad_norm


def train_one_epoch(run: Run, epoch: int) -> Dict[str, Any]:
    """The optimizer steps of one epoch (from where a recovery checkpoint left it); the epoch's metrics row."""
    cfg, env, updates = run.cfg, run.env, run.updates_per_epoch
    progress = run.partial_epoch or {"steps": 0, "loss_sum": 0.0, "time_s": 0.0}
    run.partial_epoch = None
    micro = config.per_rank_batch(cfg, env.world_size)
    run.train_loader.sampler.set_epoch(epoch, skip=progress["steps"] * cfg.train.accum_steps * micro)
    run.model.train()
    bar = None
    if cfg.output.progress and env.is_main:
        bar = progress_bar(total=updates, initial=progress["steps"], desc=f"epoch {epoch}/{cfg.sched.epochs}",
                           leave=True)
    params = [p for p in run.model_core.parameters() if p.requires_grad]
    step_loss = torch.zeros((), dtype=torch.float64, device=env.device)
    run.optimizer.zero_grad(set_to_none=True)
    batches, t0, time_before = iter(run.train_loader), time.perf_counter(), progress["time_s"]
    try:
        for steps in range(progress["steps"] + 1, updates + 1):
            lr = run.optimizer.param_groups[0]["lr"]
            grad_norm = _step(run, batches, step_loss, params)
            loss = step_loss.item()
            progress.update(steps=steps, loss_sum=progress["loss_sum"] + loss,
                            time_s=time_before + time.perf_counter() - t0)
            if run.steps_file is not None:
                run.steps_file.write(f"{run.step},{epoch},{steps},{loss:.6g},{lr:.6g},"
                                     f"{'' if grad_norm is None else f'{grad_norm:.4g}'}\n")
            if bar is not None:
                bar.set_postfix_str(f"loss {loss:.4f} (avg {progress['loss_sum'] / steps:.4f}) lr {lr:.2e} "
                                    f"{steps * cfg.train.batch_size / max(progress['time_s'], 1e-9):.0f} img/s",
                                    refresh=False)
                bar.update(1)
            if cfg.output.recovery_interval and steps % cfg.output.recovery_interval == 0 and steps < updates:
                save_recovery(run, dict(progress))
    finally:
        if bar is not None:
            bar.close()
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)
    elapsed = time_before + time.perf_counter() - t0
    row = {"epoch": epoch, "step": run.step, "lr": run.optimizer.param_groups[0]["lr"],
           "train_loss": progress["loss_sum"] / updates, "epoch_time_s": elapsed,
           "train_img_s": updates * cfg.train.batch_size / max(elapsed, 1e-9)}
    if env.device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(env.device) / 2 ** 30
    return row


def _param_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha1()
    for name, p in model.state_dict().items():
        if torch.is_tensor(p):
            digest.update(name.encode())
            digest.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def evaluate_epoch(run: Run, epoch: int) -> Dict[str, Any]:
    """Validation of the model (and of its EMA), and the DDP check that every rank holds the same weights."""
    from .validate import evaluate
    t = run.cfg.train
    res = evaluate(run.model_core, run.val_loader, run.env, amp=t.amp, channels_last=t.channels_last)
    row = {"val_loss": res["loss"], "top1": res["top1"], "top5": res["top5"]}
    if run.ema is not None:
        res = evaluate(run.ema.module, run.val_loader, run.env, amp=t.amp, channels_last=t.channels_last)
        row.update({"ema_val_loss": res["loss"], "ema_top1": res["top1"], "ema_top5": res["top5"]})
    if run.env.distributed:
        digests = run.env.all_gather_object(_param_digest(run.model_core))
        row["ranks_in_sync"] = len(set(digests)) == 1
        if not row["ranks_in_sync"]:
            _logger.warning(f"WARNING: model weights differ across ranks after epoch {epoch}: {digests}")
    return row


def _fmt_time(s: float) -> str:
    m, s = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def save_epoch(run: Run, epoch: int, row: Dict[str, Any]) -> None:
    """Metrics files, last.pth (best.pth, checkpoint-<epoch>.pth) after an epoch; the recovery file goes."""
    rngs = run.env.all_gather_object(checkpoint.rng_state())
    run.epoch = epoch
    improved = row["top1"] > run.best["top1"]
    if improved:
        run.best = {"top1": row["top1"], "epoch": epoch}
    if run.env.is_main:
        out = run.out_dir
        run.metrics.add_epoch(row)
        checkpoint.atomic_save(_state(run, rngs), out / "last.pth")
        (out / RECOVERY).unlink(missing_ok=True)
        if improved:
            checkpoint.atomic_copy(out / "last.pth", out / "best.pth")
        keep = run.cfg.output.keep_epochs
        if keep:
            checkpoint.atomic_copy(out / "last.pth", out / f"checkpoint-{epoch:04d}.pth")
            (out / f"checkpoint-{epoch - keep:04d}.pth").unlink(missing_ok=True)
        ema_text = f" | EMA top-1 {row['ema_top1']:.2f}" if run.ema is not None else ""
        _logger.info(f"epoch {epoch}/{run.cfg.sched.epochs}  train loss {row['train_loss']:.4f}  val loss "
                     f"{row['val_loss']:.4f}  top-1 {row['top1']:.2f}  top-5 {row['top5']:.2f}{ema_text}  "
                     f"({row['train_img_s']:.0f} img/s, {_fmt_time(row['epoch_time_s'])})")
    run.env.barrier()


def finish(run: Run) -> Dict[str, Any]:
    """Curves and the closing line; the result of :func:`train`."""
    if run.steps_file is not None:
        run.steps_file.close()
    wall, history = time.time() - run.t_start, run.metrics.history
    final = history[-1] if history else {}
    if run.env.is_main and history:
        if run.cfg.output.plot:
            try:
                plot_curves(history, read_steps(run.out_dir / "train_steps.csv"), run.out_dir / "curves.png",
                            title=f"{run.cfg.model.name} on {run.data_name}")
            except Exception as e:  # a plotting problem must not lose a finished run
                _logger.warning(f"plot failed: {e}")
        ema_text = f", EMA top-1 {final['ema_top1']:.2f}%" if final.get("ema_top1") is not None else ""
        _logger.info(f"done: top-1 {final['top1']:.2f}% (best {run.best['top1']:.2f}% @ epoch {run.best['epoch']})"
                     f"{ema_text}; wall {_fmt_time(wall)}; checkpoints, config.yaml, metrics.csv/json, curves.png "
                     f"in {run.out_dir}")
    return {"out_dir": str(run.out_dir), "history": history, "final": final, "best": run.best, "wall_s": wall,
            "step": run.step, "rank": run.env.rank, "world_size": run.env.world_size}


def train(cfg: Dict[str, Any], resume: Optional[str] = None) -> Dict[str, Any]:
    """Run training for an already-resolved config.  Validates it first (ConfigError before any work)."""
    import vssm  # noqa: F401  (registers the vssm models in timm)
    config.validate_config(cfg)
    typed = Config.from_dict(cfg)
    threads_before = torch.get_num_threads()
    env = dist.init(typed.train.device)
    setup_logging(env.is_main)
    try:
        run = setup(typed, env, resume)
        for epoch in range(run.epoch + 1, typed.sched.epochs + 1):
            row = train_one_epoch(run, epoch)
            row.update(evaluate_epoch(run, epoch))
            save_epoch(run, epoch, row)
        return finish(run)
    finally:
        torch.set_num_threads(threads_before)
        dist.cleanup()


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        resolved = resolve_args(args)
        if args.print_config:
            import vssm  # noqa: F401
            config.validate_config(resolved["cfg"])
            print(config.dump(resolved["cfg"]), end="")
            return 0
        train(resolved["cfg"], resolved["resume"])
    except ConfigError as e:
        parser.error(str(e))  # prints usage + message, exit status 2
    except NonFiniteLossError as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"vssm-train: error: {e}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("vssm-train: interrupted; resume from last.pth (or recovery.pth) with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
