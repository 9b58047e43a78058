"""Configuration for the classification engine.

A run is described by one nested dict with fixed sections (model, data, aug, optim, sched, train, ema,
output).  It is assembled in layers:

    built-in defaults  <-  recipe YAML (--config)  <-  named CLI flags  <-  --set key.sub=value

Every key that a layer sets must already exist in the defaults, so a typo is an error instead of a
silently ignored option.  The effective config is written next to the checkpoints as ``config.yaml``.

With no data root the engine trains on the embedded digits dataset; :data:`DIGITS_RECIPE` holds the
settings of that default run (small model, 32x32 images, short schedule).
"""
from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import yaml


class ConfigError(ValueError):
    """A bad argument or config value, detected before any work starts."""


# ----------------------------------------------------------------------------------------------------
# defaults: the official VMamba ImageNet-1K recipe (Swin/DeiT style).  Recipes override parts of it.
# ----------------------------------------------------------------------------------------------------
DEFAULTS: Dict[str, Any] = {
    "model": {
        "name": "vmamba_tiny",
        "pretrained": None,          # path to a checkpoint (ours or official) to initialise from
        "drop_path_rate": 0.2,
        "drop_rate": None,           # classifier dropout; None = model default
        "grad_checkpointing": False,
        "kwargs": {},                # extra keyword arguments for timm.create_model
    },
    "data": {
        "root": None,                # ImageFolder root with train/ and val/; None = embedded digits
        "synthetic": False,          # random ImageNet-shaped tensors made on the device (benchmarks)
        "synthetic_classes": 1000,
        "synthetic_train_size": 51200,
        "synthetic_val_size": 2048,
        "train_split": "train",
        "val_split": "val",
        "img_size": 224,
        "crop_pct": 0.875,           # eval: resize to img_size / crop_pct, then center crop img_size
        "interpolation": "bicubic",
        "mean": None,                # None = model's pretrained_cfg, else ImageNet
        "std": None,
        "workers": 8,
        "pin_memory": True,
        "persistent_workers": True,
    },
    "aug": {
        "scale": [0.08, 1.0],        # RandomResizedCrop area range
        "ratio": [0.75, 1.3333333333],
        "hflip": 0.5,
        "color_jitter": 0.4,
        "auto_augment": "rand-m9-mstd0.5-inc1",
        "re_prob": 0.25,             # random erasing
        "re_mode": "pixel",
        "re_count": 1,
        "mixup": 0.8,
        "cutmix": 1.0,
        "mixup_prob": 1.0,
        "mixup_switch_prob": 0.5,
        "mixup_mode": "batch",
        "label_smoothing": 0.1,
    },
    "optim": {
        "name": "adamw",
        "lr": 1.0e-3,                # for batch_size = lr_ref_batch (when set)
        "lr_ref_batch": 1024,        # None = use lr as is; else lr *= batch_size / lr_ref_batch
        "weight_decay": 0.05,
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        "clip_grad": 5.0,            # max global grad norm; None/0 = off
        # parameters whose name contains one of these get no weight decay (besides 1-D params, biases,
        # norm weights and whatever model.no_weight_decay() returns)
        "no_weight_decay_keys": ["A_logs", "Ds", "dt_projs_bias", "pos_embed", "absolute_pos_embed",
                                 "relative_position_bias_table", "cls_token"],
    },
    "sched": {
        "epochs": 300,
        "warmup_epochs": 20,
        "warmup_lr": 1.0e-6,
        "min_lr": 1.0e-5,
    },
    "train": {
        "batch_size": 1024,          # GLOBAL batch per optimizer step (all ranks x accumulation)
        "accum_steps": 1,
        "amp": "bf16",               # none | bf16 | fp16 (fp16 uses a GradScaler, CUDA only)
        "compile": False,
        "channels_last": False,
        "seed": 0,
        "device": "auto",            # auto | cpu | cuda
        "threads": None,             # torch intra-op CPU threads per process; None = torch's default
        "max_steps_per_epoch": None, # cap optimizer steps per epoch (smoke tests)
        "val_batch_size": None,      # per rank; None = per-rank train micro-batch x 2
    },
    "ema": {
        "enabled": True,
        "decay": 0.9999,
        "warmup": False,             # timm ModelEmaV3 decay warmup
    },
    "distill": {                     # DeiT/GroupMamba knowledge distillation (active when teacher is set)
        "teacher": None,             # timm/vssm model name of the frozen teacher
        "teacher_checkpoint": None,  # its weights (local file; nothing is downloaded)
        "kind": "hard",              # hard | soft | none
        "alpha": 0.5,
        "tau": 1.0,
    },
    "output": {
        "dir": None,                 # exact run directory; None = <root>/<model>-<dataset>-<time>
        "root": "output/train",
        "keep_epochs": 0,            # also keep checkpoint-<epoch>.pth for the last N epochs (0 = only last/best)
        "plot": True,
        "progress": True,
    },
}

# The embedded default: a small vssm on handwritten digits, a few minutes on 2 CPU cores.
DIGITS_RECIPE: Dict[str, Any] = {
    "model": {"name": "vmamba_nano", "drop_path_rate": 0.0},
    "data": {"root": None, "img_size": 32, "crop_pct": 1.0, "interpolation": "bilinear",
             "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
             "workers": 1, "pin_memory": False, "persistent_workers": True},
    # digits are not mirror symmetric: no flips; gentle crops; light RandAugment/erasing/mixup
    "aug": {"scale": [0.6, 1.0], "ratio": [0.8, 1.25], "hflip": 0.0, "color_jitter": 0.0,
            "auto_augment": "rand-m5-n1-mstd0.5", "re_prob": 0.1, "re_mode": "pixel",
            "mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.1},
    "optim": {"lr": 3.0e-3, "lr_ref_batch": None, "weight_decay": 0.05, "clip_grad": 5.0},
    "sched": {"epochs": 12, "warmup_epochs": 1, "warmup_lr": 1.0e-5, "min_lr": 1.0e-5},
    # one compute thread (+ one data worker): on a small shared CPU, OpenMP threads that get preempted make
    # a 2-thread step 5-10x slower than a 1-thread step for a model this small
    "train": {"batch_size": 64, "amp": "none", "device": "auto", "threads": 1},
    "ema": {"enabled": True, "decay": 0.99, "warmup": True},
}

AMP_CHOICES = ("none", "bf16", "fp16")
DEVICE_CHOICES = ("auto", "cpu", "cuda")


# ----------------------------------------------------------------------------------------------------
# merging and overrides
# ----------------------------------------------------------------------------------------------------
def merge(base: Dict[str, Any], update: Dict[str, Any], origin: str, prefix: str = "") -> Dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``; unknown keys raise ConfigError."""
    out = copy.deepcopy(base)
    if not isinstance(update, dict):
        raise ConfigError(f"{origin}: expected a mapping at '{prefix or '<top>'}', got {type(update).__name__}")
    for key, value in update.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in out:
            known = ", ".join(sorted(out)) if isinstance(out, dict) else ""
            raise ConfigError(f"{origin}: unknown config key '{path}' (known keys here: {known})")
        # free-form dicts (model.kwargs) take the value as is
        if isinstance(out[key], dict) and isinstance(value, dict) and out[key] and path != "model.kwargs":
            out[key] = merge(out[key], value, origin, path)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_set(items: Iterable[str]) -> Dict[str, Any]:
    """``["optim.lr=1e-3", "aug.scale=[0.5,1]"]`` -> nested dict (values parsed as YAML)."""
    nested: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key.sub=value, got '{item}'")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"--set expects key.sub=value, got '{item}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item}: cannot parse value: {e}") from None
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: '{p}' is set both as a value and as a section")
        node[parts[-1]] = value
    return nested


def recipe_dirs() -> List[Path]:
    """Where bare recipe names are looked up: ./configs/classification, then the recipes installed with vssm
    (the package ``vssm.recipes``: the checkout's configs/classification in an editable install)."""
    spec = importlib.util.find_spec("vssm.recipes")
    installed = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    dirs = [Path.cwd() / "configs" / "classification", *installed]
    out: List[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def resolve_recipe(name: str) -> Path:
    p = Path(name).expanduser()
    if p.is_file():
        return p
    candidates = []
    if p.suffix not in (".yaml", ".yml") and os.sep not in name:
        for d in recipe_dirs():
            for ext in (".yaml", ".yml"):
                candidates.append(d / f"{name}{ext}")
    for c in candidates:
        if c.is_file():
            return c
    avail = sorted({c.stem for d in recipe_dirs() if d.is_dir() for c in d.glob("*.y*ml")})
    raise ConfigError(f"config '{name}' not found (not a file; known recipes: {', '.join(avail) or 'none'})")


def _deep_update(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "kwargs":
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_recipe(name: str, _seen: Optional[List[str]] = None) -> Dict[str, Any]:
    """Read a recipe; a ``_base_: other_recipe`` key inherits from another recipe (same lookup rules)."""
    path = resolve_recipe(name)
    seen = list(_seen or [])
    if str(path.resolve()) in seen:
        raise ConfigError(f"config {path}: circular _base_ chain")
    seen.append(str(path.resolve()))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    base = data.pop("_base_", None)
    if base:
        cand = path.parent / base
        ref = str(cand) if cand.is_file() else str(base)
        data = _deep_update(load_recipe(ref, seen), data)
    return data


def build_config(recipe: Optional[str] = None, overrides: Optional[List[Dict[str, Any]]] = None,
                 base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """defaults <- (digits default when no recipe and no base) <- recipe <- overrides (in order)."""
    if base is not None:
        cfg = copy.deepcopy(base)
    else:
        cfg = copy.deepcopy(DEFAULTS)
        if recipe is None:
            cfg = merge(cfg, DIGITS_RECIPE, "built-in digits recipe")
        else:
            cfg = merge(cfg, load_recipe(recipe), f"config {recipe}")
    for i, ov in enumerate(overrides or []):
        cfg = merge(cfg, ov, "command line")
    return cfg


# ----------------------------------------------------------------------------------------------------
# validation (runs before any data is touched or any process group is created)
# ----------------------------------------------------------------------------------------------------
def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def world_size_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not an integer") from None


def check_data_root(root: Optional[str], splits: Iterable[str]) -> None:
    if root is None:
        return
    r = Path(root).expanduser()
    _require(r.is_dir(), f"data root '{root}' does not exist or is not a directory")
    class_sets = {}
    for split in splits:
        d = r / split
        _require(d.is_dir(), f"data root '{root}' has no '{split}/' folder (expected ImageNet layout "
                             f"<root>/train/<class>/*.jpg and <root>/val/<class>/*.jpg)")
        classes = sorted(e.name for e in d.iterdir() if e.is_dir())
        _require(len(classes) > 0, f"'{d}' contains no class sub-folders (expected <split>/<class>/<images>)")
        class_sets[split] = classes
    sets = list(class_sets.values())
    if len(sets) == 2 and sets[0] != sets[1]:
        a, b = (set(s) for s in sets)
        diff = sorted(a ^ b)[:5]
        raise ConfigError(f"train and val class folders differ ({len(a)} vs {len(b)} classes; e.g. {diff})")


def check_model_name(name: str) -> None:
    import timm
    _require(isinstance(name, str) and name, "model.name must be a non-empty string")
    if not timm.is_model(name):
        close = [m for m in timm.list_models() if name.split("_")[0] in m][:8]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ConfigError(f"unknown model '{name}': not registered in timm{hint}. "
                          f"vssm models are registered by `import vssm`.")


def per_rank_batch(cfg: Dict[str, Any], world_size: int) -> int:
    t = cfg["train"]
    return t["batch_size"] // (world_size * t["accum_steps"])


def validate_config(cfg: Dict[str, Any], world_size: Optional[int] = None, cuda_available: Optional[bool] = None,
                    check_paths: bool = True, check_model: bool = True) -> None:
    """Raise ConfigError with a clear message for any bad value.  Cheap: touches no data."""
    import torch
    ws = world_size_from_env() if world_size is None else world_size
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    t, s, o, a, d, e = cfg["train"], cfg["sched"], cfg["optim"], cfg["aug"], cfg["data"], cfg["ema"]

    def _int(v, name, lo):
        _require(isinstance(v, int) and not isinstance(v, bool) and v >= lo, f"{name} must be an integer >= {lo}, got {v!r}")

    def _num(v, name, lo=None, hi=None, allow_none=False):
        if v is None and allow_none:
            return
        _require(isinstance(v, (int, float)) and not isinstance(v, bool), f"{name} must be a number, got {v!r}")
        _require(lo is None or v >= lo, f"{name} must be >= {lo}, got {v}")
        _require(hi is None or v <= hi, f"{name} must be <= {hi}, got {v}")

    _int(ws, "world size", 1)
    _int(t["batch_size"], "train.batch_size", 1)
    _int(t["accum_steps"], "train.accum_steps", 1)
    _int(s["epochs"], "sched.epochs", 1)
    _num(s["warmup_epochs"], "sched.warmup_epochs", 0)
    _require(s["warmup_epochs"] < s["epochs"] or s["warmup_epochs"] == 0,
             f"sched.warmup_epochs ({s['warmup_epochs']}) must be smaller than sched.epochs ({s['epochs']})")
    _num(o["lr"], "optim.lr", 0)
    _require(o["lr"] > 0, f"optim.lr must be > 0, got {o['lr']}")
    _num(o["weight_decay"], "optim.weight_decay", 0)
    _num(o["clip_grad"], "optim.clip_grad", 0, allow_none=True)
    if o["lr_ref_batch"] is not None:
        _int(o["lr_ref_batch"], "optim.lr_ref_batch", 1)
    _require(o["name"] in ("adamw",), f"optim.name: only 'adamw' is supported, got {o['name']!r}")
    _num(s["min_lr"], "sched.min_lr", 0)
    _num(s["warmup_lr"], "sched.warmup_lr", 0)
    _require(t["amp"] in AMP_CHOICES, f"train.amp must be one of {AMP_CHOICES}, got {t['amp']!r}")
    _require(t["device"] in DEVICE_CHOICES, f"train.device must be one of {DEVICE_CHOICES}, got {t['device']!r}")
    if t["device"] == "cuda":
        _require(cuda, "train.device=cuda but CUDA is not available")
    on_cuda = cuda and t["device"] != "cpu"
    _require(not (t["amp"] == "fp16" and not on_cuda),
             "train.amp=fp16 needs a CUDA device (GradScaler); on CPU use --amp bf16 or --amp none")
    if t["threads"] is not None:
        _int(t["threads"], "train.threads", 1)
    if t["max_steps_per_epoch"] is not None:
        _int(t["max_steps_per_epoch"], "train.max_steps_per_epoch", 1)
    if t["val_batch_size"] is not None:
        _int(t["val_batch_size"], "train.val_batch_size", 1)
    _int(d["img_size"], "data.img_size", 8)
    _num(d["crop_pct"], "data.crop_pct", 0.05, 1.0)
    _int(d["workers"], "data.workers", 0)
    _num(e["decay"], "ema.decay", 0.0, 1.0)
    for k in ("mixup", "cutmix", "label_smoothing", "re_prob", "hflip", "mixup_prob", "mixup_switch_prob"):
        _num(a[k], f"aug.{k}", 0)
    _require(a["label_smoothing"] < 1, f"aug.label_smoothing must be < 1, got {a['label_smoothing']}")
    _require(a["mixup_mode"] in ("batch", "pair", "elem"), f"aug.mixup_mode must be batch|pair|elem, got {a['mixup_mode']!r}")
    _require(isinstance(d["interpolation"], str), "data.interpolation must be a string")

    # the global batch must split evenly over ranks and accumulation steps
    denom = ws * t["accum_steps"]
    _require(t["batch_size"] % denom == 0,
             f"train.batch_size={t['batch_size']} is not divisible by world_size x accum_steps = "
             f"{ws} x {t['accum_steps']} = {denom}; pick a multiple of {denom}")
    micro = per_rank_batch(cfg, ws)
    if (a["mixup"] > 0 or a["cutmix"] > 0) and a["mixup_mode"] != "elem":
        _require(micro % 2 == 0, f"mixup/cutmix needs an even per-rank micro-batch, got {micro} "
                                 f"(batch_size {t['batch_size']} / {ws} ranks / {t['accum_steps']} accum steps)")

    k = cfg["distill"]
    _require(k["kind"] in ("hard", "soft", "none"), f"distill.kind must be hard|soft|none, got {k['kind']!r}")
    _num(k["alpha"], "distill.alpha", 0.0, 1.0)
    _num(k["tau"], "distill.tau", 0.0)
    _require(k["tau"] > 0, "distill.tau must be > 0")

    if check_paths and not d["synthetic"]:
        check_data_root(d["root"], (d["train_split"], d["val_split"]))
        tc = k["teacher_checkpoint"]
        _require(tc is None or Path(tc).expanduser().is_file(), f"distill.teacher_checkpoint: '{tc}' not found")
        p = cfg["model"]["pretrained"]
        _require(p is None or Path(p).expanduser().is_file(), f"model.pretrained: checkpoint '{p}' not found")
    if check_model:
        check_model_name(cfg["model"]["name"])
        if k["teacher"]:
            check_model_name(k["teacher"])


class _Dumper(yaml.SafeDumper):
    pass


def _flow_list(dumper, data):
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(list, _flow_list)
_Dumper.add_representer(tuple, _flow_list)


def dump(cfg: Dict[str, Any]) -> str:
    """YAML text of a config: block mappings, one-line lists."""
    return yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
