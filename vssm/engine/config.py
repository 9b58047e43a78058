"""The configuration schema of the classification engine.

The dataclasses below are the one schema: each option is declared once, with :func:`option` (default, help text,
optional CLI flag, allowed range or choices), and everything else follows from it:

- ``DEFAULTS``, the nested dict of all defaults; a run's config is a nested dict of that shape (what recipes,
  ``--set section.key=value``, ``config.yaml`` and the checkpoints hold) and :meth:`Config.from_dict` gives the
  typed view the engine reads;
- :func:`add_flags` makes the argparse flags, :func:`merge` is the one merge rule (mappings merge key by key,
  anything else, lists and ``model.kwargs`` included, is replaced; a key the schema lacks is an error);
- :func:`validate_config` checks every value against its declared type, range and choices, then the rules
  between options, before any data is touched or any process group exists.

Dataclasses rather than pydantic or OmegaConf: the standard library does it, no new dependency, and the config
stays a plain dict of Python values in checkpoints (loadable with ``weights_only=True``).

Layers: recipe YAML (``--config``, ``_base_`` inheritance; without one the digits recipe installed with vssm,
``vssm.recipes/digits_vmamba_nano.yaml``) <- named flags <- ``--set``.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.resources
import importlib.util
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import yaml

AMP_CHOICES = ("none", "bf16", "fp16")
DEVICE_CHOICES = ("auto", "cpu", "cuda")
DEFAULT_RECIPE = "digits_vmamba_nano"


class ConfigError(ValueError):
    """A bad argument or config value, detected before any work starts."""


def option(default: Any, help: str = "", flag: Optional[str] = None, choices: Optional[Iterable] = None,
           lo: Optional[float] = None, hi: Optional[float] = None, above: Optional[float] = None):
    """A config field: ``flag`` names its CLI flag (a bool flag ``--no-x`` sets False, others True), ``lo`` /
    ``hi`` bound it (inclusive), ``above`` from below (exclusive)."""
    return field(default_factory=lambda: copy.deepcopy(default),
                 metadata=dict(help=help, flag=flag, choices=tuple(choices) if choices else None, lo=lo, hi=hi,
                               above=above))


@dataclass
class ModelConfig:
    """model"""
    name: str = option("vmamba_tiny", "registered model name, e.g. vmamba_tiny", "--model")
    pretrained: Optional[str] = option(None, "initialise from a checkpoint (ours or official)", "--pretrained")
    drop_path_rate: Optional[float] = option(0.2, "stochastic depth rate", "--drop-path", lo=0)
    drop_rate: Optional[float] = option(None, "classifier dropout; None = model default", lo=0)
    grad_checkpointing: bool = option(False, "activation checkpointing", "--grad-checkpointing")
    kwargs: Dict[str, Any] = option({}, "extra keyword arguments for timm.create_model")


@dataclass
class DataConfig:
    """recipe and data"""
    root: Optional[str] = option(None, "ImageFolder root with train/ and val/ (default: embedded digits)", "--data")
    synthetic: bool = option(False, "random ImageNet-shaped tensors on the device (throughput runs)", "--synthetic")
    synthetic_classes: int = option(1000, lo=1)
    synthetic_train_size: int = option(51200, lo=1)
    synthetic_val_size: int = option(2048, lo=1)
    train_split: str = option("train")
    val_split: str = option("val")
    img_size: int = option(224, flag="--img-size", lo=8)
    crop_pct: float = option(0.875, "eval: resize to img_size / crop_pct, center crop img_size", "--crop-pct", lo=0.05,
                             hi=1.0)
    interpolation: str = option("bicubic")
    mean: Optional[List[float]] = option(None, "None = the model's pretrained_cfg")
    std: Optional[List[float]] = option(None)
    workers: int = option(8, flag="--workers", lo=0)
    pin_memory: bool = option(True)
    persistent_workers: bool = option(True)


@dataclass
class AugConfig:
    """augmentation"""
    scale: List[float] = option([0.08, 1.0], "RandomResizedCrop area range")
    ratio: List[float] = option([0.75, 1.3333333333])
    hflip: float = option(0.5, lo=0)
    color_jitter: Optional[float] = option(0.4, lo=0)
    auto_augment: Optional[str] = option("rand-m9-mstd0.5-inc1")
    re_prob: float = option(0.25, "random erasing probability", lo=0)
    re_mode: str = option("pixel")
    re_count: int = option(1, lo=1)
    mixup: float = option(0.8, lo=0)
    cutmix: float = option(1.0, lo=0)
    mixup_prob: float = option(1.0, lo=0)
    mixup_switch_prob: float = option(0.5, lo=0)
    mixup_mode: str = option("batch", choices=("batch", "pair", "elem"))
    label_smoothing: float = option(0.1, "below 1", lo=0)


@dataclass
class OptimConfig:
    """optimisation"""
    name: str = option("adamw", choices=("adamw",))
    lr: float = option(1.0e-3, "learning rate at the global batch lr_ref_batch", "--lr", above=0)
    lr_ref_batch: Optional[int] = option(1024, "None = lr as is; else lr *= batch_size / lr_ref_batch", lo=1)
    weight_decay: float = option(0.05, flag="--weight-decay", lo=0)
    betas: List[float] = option([0.9, 0.999])
    eps: float = option(1.0e-8, lo=0)
    clip_grad: Optional[float] = option(5.0, "max global grad norm; None/0 = off", "--clip-grad", lo=0)
    # besides 1-D tensors, biases and the model's no_weight_decay() (the SSM parameters are flagged there)
    no_weight_decay_keys: List[str] = option(
        ["A_logs", "Ds", "dt_projs_bias", "pos_embed", "absolute_pos_embed", "relative_position_bias_table",
         "cls_token"], "parameters whose name contains one of these get no weight decay")


@dataclass
class SchedConfig:
    """schedule"""
    epochs: int = option(300, flag="--epochs", lo=1)
    warmup_epochs: float = option(20, flag="--warmup-epochs", lo=0)
    warmup_lr: float = option(1.0e-6, lo=0)
    min_lr: float = option(1.0e-5, lo=0)


@dataclass
class TrainConfig:
    """training"""
    batch_size: int = option(1024, "GLOBAL batch per optimizer step (all ranks x accumulation)", "--batch-size", lo=1)
    accum_steps: int = option(1, "gradient accumulation steps", "--accum-steps", lo=1)
    amp: str = option("bf16", "fp16 uses a GradScaler (CUDA only)", "--amp", choices=AMP_CHOICES)
    compile: bool = option(False, "torch.compile the model", "--compile")
    channels_last: bool = option(False, flag="--channels-last")
    seed: int = option(0, flag="--seed")
    device: str = option("auto", flag="--device", choices=DEVICE_CHOICES)
    threads: Optional[int] = option(None, "torch CPU threads per process; None = torch's default", "--threads", lo=1)
    max_steps_per_epoch: Optional[int] = option(None, "cap optimizer steps per epoch (smoke runs)",
                                                "--max-steps-per-epoch", lo=1)
    val_batch_size: Optional[int] = option(None, "per rank; None = 2 x the per-rank micro-batch", lo=1)


@dataclass
class EmaConfig:
    """EMA of weights"""
    enabled: bool = option(True, "disable the EMA of weights", "--no-ema")
    decay: float = option(0.9999, flag="--ema-decay", lo=0, hi=1)
    warmup: bool = option(False, "timm ModelEmaV3 decay warmup")


@dataclass
class DistillConfig:
    """distillation (DeiT / GroupMamba)"""
    teacher: Optional[str] = option(None, "frozen teacher model name (enables distillation)", "--teacher")
    teacher_checkpoint: Optional[str] = option(None, "teacher weights (local file)", "--teacher-checkpoint")
    kind: str = option("hard", flag="--distill-type", choices=("hard", "soft", "none"))
    alpha: float = option(0.5, flag="--distill-alpha", lo=0, hi=1)
    tau: float = option(1.0, flag="--distill-tau", above=0)


@dataclass
class OutputConfig:
    """output"""
    dir: Optional[str] = option(None, "run directory (default: <root>/<model>-<data>-<time>)", "--output")
    root: str = option("output/train")
    keep_epochs: int = option(0, "also keep checkpoint-<epoch>.pth of the last N epochs", "--keep-epochs", lo=0)
    recovery_interval: int = option(0, "write recovery.pth every N optimizer steps inside an epoch (0 = off)",
                                    "--recovery-interval", lo=0)
    plot: bool = option(True, "no curves.png", "--no-plot")
    progress: bool = option(True, "no progress bar", "--no-progress")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @classmethod
    def from_dict(cls, cfg: Dict[str, Any]) -> "Config":
        return cls(**{name: section(**cfg[name]) for name, section in _types(cls).items()})


def _types(schema: type) -> Dict[str, Any]:
    return typing.get_type_hints(schema)


def _fields(schema: type):
    hints = _types(schema)
    return [(f, hints[f.name]) for f in dataclasses.fields(schema)]


DEFAULTS: Dict[str, Any] = dataclasses.asdict(Config())


# ----------------------------------------------------------------------------------------------------
# flags, --set, merging, recipes
# ----------------------------------------------------------------------------------------------------
def add_flags(parser, only: Optional[Iterable[str]] = None) -> None:
    """One argparse flag per option that declares one (of ``only``, ``section.key`` names, when given), grouped
    by section; ``dest`` is ``section.key``."""
    for section, section_type in _fields(Config):
        group = parser.add_argument_group(section_type.__doc__)
        for f, tp in _fields(section_type):
            flag, dest, helptext = f.metadata["flag"], f"{section.name}.{f.name}", f.metadata["help"] or None
            if flag is None or (only is not None and dest not in only):
                continue
            if tp is bool:
                group.add_argument(flag, dest=dest, action="store_const", const=not flag.startswith("--no-"),
                                   help=helptext)
            else:
                scalar = next(a for a in (typing.get_args(tp) or (tp,)) if a is not type(None))
                group.add_argument(flag, dest=dest, type=scalar, choices=f.metadata["choices"], help=helptext,
                                   metavar=None if f.metadata["choices"] else f.name.upper())


def flag_overrides(args) -> Dict[str, Any]:
    """The options set by flags (parsed by :func:`add_flags`) as a nested dict."""
    out: Dict[str, Dict[str, Any]] = {}
    for dest, value in vars(args).items():
        if "." in dest and value is not None:
            section, key = dest.split(".", 1)
            out.setdefault(section, {})[key] = value
    return out


def merge(base: Dict[str, Any], update: Dict[str, Any], origin: str, schema: type = Config,
          prefix: str = "") -> Dict[str, Any]:
    """``update`` merged into a copy of ``base`` (either may be partial): sections merge key by key, values
    replace; a key the schema does not have raises ConfigError."""
    if not isinstance(update, dict):
        raise ConfigError(f"{origin}: expected a mapping at '{prefix or '<top>'}', got {type(update).__name__}")
    known = _types(schema)
    out = copy.deepcopy(base)
    for key, value in update.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            raise ConfigError(f"{origin}: unknown config key '{path}' (known keys here: {', '.join(known)})")
        if dataclasses.is_dataclass(known[key]):
            out[key] = merge(out.get(key, {}), value, origin, known[key], path)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_set(items: Iterable[str]) -> Dict[str, Any]:
    """``["optim.lr=1e-3", "aug.scale=[0.5,1]"]`` -> nested dict (values parsed as YAML)."""
    nested: Dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key.sub=value, got '{item}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item}: cannot parse value: {e}") from None
        *sections, leaf = key.strip().split(".")
        node = nested
        for part in sections:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: '{part}' is set both as a value and as a section")
        node[leaf] = value
    return nested


def recipe_dirs() -> List[Path]:
    """Where bare recipe names are looked up: ./configs/classification, then the recipes installed with vssm
    (the package ``vssm.recipes``: the checkout's configs/classification in an editable install)."""
    spec = importlib.util.find_spec("vssm.recipes")
    installed = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    return list(dict.fromkeys([Path.cwd() / "configs" / "classification", *installed]))


def resolve_recipe(name: str) -> Path:
    path = Path(name).expanduser()
    if path.is_file():
        return path
    if path.suffix not in (".yaml", ".yml") and os.sep not in name:
        for d in recipe_dirs():
            for candidate in (d / f"{name}.yaml", d / f"{name}.yml"):
                if candidate.is_file():
                    return candidate
    known = sorted({c.stem for d in recipe_dirs() if d.is_dir() for c in d.glob("*.y*ml")})
    raise ConfigError(f"config '{name}' not found (not a file; known recipes: {', '.join(known) or 'none'})")


def load_recipe(name: str, _seen: Iterable[str] = ()) -> Dict[str, Any]:
    """A recipe as a (partial) config dict; ``_base_: other`` inherits from another recipe (a path relative to
    this file, or a recipe name)."""
    path = resolve_recipe(name)
    if str(path.resolve()) in _seen:
        raise ConfigError(f"config {path}: circular _base_ chain")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: top level must be a mapping")
    base = data.pop("_base_", None)
    if not base:
        return merge({}, data, f"config {path}")
    sibling = path.parent / base
    parent = load_recipe(str(sibling) if sibling.is_file() else base, [*_seen, str(path.resolve())])
    return merge(parent, data, f"config {path}")


def build_config(recipe: Optional[str] = None, overrides: Optional[List[Dict[str, Any]]] = None,
                 base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """``base`` (else the defaults <- the recipe, by default the installed digits recipe) <- overrides."""
    if base is not None:
        cfg = merge(DEFAULTS, base, "base config")
    elif recipe is None:
        default = importlib.resources.files("vssm.recipes") / f"{DEFAULT_RECIPE}.yaml"
        cfg = merge(DEFAULTS, load_recipe(str(default)), "built-in digits recipe")
    else:
        cfg = merge(DEFAULTS, load_recipe(recipe), f"config {recipe}")
    for update in overrides or []:
        cfg = merge(cfg, update, "command line")
    return cfg


# ----------------------------------------------------------------------------------------------------
# validation (runs before any data is touched or any process group is created)
# ----------------------------------------------------------------------------------------------------
def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _type_ok(value: Any, tp: Any) -> bool:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union:
        return value is None or any(_type_ok(value, a) for a in args if a is not type(None))
    if typing.get_origin(tp) is list:
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value)
    if typing.get_origin(tp) is dict:
        return isinstance(value, dict)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def check_values(cfg: Dict[str, Any], schema: type = Config, prefix: str = "") -> None:
    """Every value against the type, range and choices its option declares."""
    for f, tp in _fields(schema):
        path, value = f"{prefix}{f.name}", cfg[f.name]
        if dataclasses.is_dataclass(tp):
            check_values(value, tp, path + ".")
            continue
        m = f.metadata
        _require(_type_ok(value, tp), f"{path} must be of type {getattr(tp, '__name__', tp)}, got {value!r}")
        if m["choices"]:
            _require(value in m["choices"], f"{path} must be one of {m['choices']}, got {value!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _require(m["lo"] is None or value >= m["lo"], f"{path} must be >= {m['lo']}, got {value}")
            _require(m["hi"] is None or value <= m["hi"], f"{path} must be <= {m['hi']}, got {value}")
            _require(m["above"] is None or value > m["above"], f"{path} must be > {m['above']}, got {value}")


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
    class_sets = []
    for split in splits:
        d = r / split
        _require(d.is_dir(), f"data root '{root}' has no '{split}/' folder (expected ImageNet layout "
                             f"<root>/train/<class>/*.jpg and <root>/val/<class>/*.jpg)")
        classes = sorted(e.name for e in d.iterdir() if e.is_dir())
        _require(len(classes) > 0, f"'{d}' contains no class sub-folders (expected <split>/<class>/<images>)")
        class_sets.append(set(classes))
    if len(class_sets) == 2 and class_sets[0] != class_sets[1]:
        a, b = class_sets
        raise ConfigError(f"train and val class folders differ ({len(a)} vs {len(b)} classes; "
                          f"e.g. {sorted(a ^ b)[:5]})")


def check_model_name(name: str) -> None:
    import timm
    _require(isinstance(name, str) and name, "model.name must be a non-empty string")
    if not timm.is_model(name):
        close = [m for m in timm.list_models() if name.split("_")[0] in m][:8]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ConfigError(f"unknown model '{name}': not registered in timm{hint}. "
                          f"vssm models are registered by `import vssm`.")


def per_rank_batch(cfg: Config, world_size: int) -> int:
    return cfg.train.batch_size // (world_size * cfg.train.accum_steps)


def validate_config(cfg: Dict[str, Any], world_size: Optional[int] = None, cuda_available: Optional[bool] = None,
                    check_paths: bool = True, check_model: bool = True) -> None:
    """Raise ConfigError with a clear message for any bad value.  Cheap: touches no data."""
    import torch
    check_values(cfg)
    c = Config.from_dict(cfg)
    ws = world_size_from_env() if world_size is None else world_size
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    _require(isinstance(ws, int) and ws >= 1, f"world size must be an integer >= 1, got {ws!r}")
    _require(c.sched.warmup_epochs < c.sched.epochs or c.sched.warmup_epochs == 0,
             f"sched.warmup_epochs ({c.sched.warmup_epochs}) must be smaller than sched.epochs ({c.sched.epochs})")
    _require(c.aug.label_smoothing < 1, f"aug.label_smoothing must be < 1, got {c.aug.label_smoothing}")
    _require(c.train.device != "cuda" or cuda, "train.device=cuda but CUDA is not available")
    _require(c.train.amp != "fp16" or (cuda and c.train.device != "cpu"),
             "train.amp=fp16 needs a CUDA device (GradScaler); on CPU use --amp bf16 or --amp none")
    denom = ws * c.train.accum_steps   # the global batch splits evenly over ranks and accumulation steps
    _require(c.train.batch_size % denom == 0,
             f"train.batch_size={c.train.batch_size} is not divisible by world_size x accum_steps = "
             f"{ws} x {c.train.accum_steps} = {denom}; pick a multiple of {denom}")
    micro = per_rank_batch(c, ws)
    if (c.aug.mixup > 0 or c.aug.cutmix > 0) and c.aug.mixup_mode != "elem":
        _require(micro % 2 == 0, f"mixup/cutmix needs an even per-rank micro-batch, got {micro} "
                                 f"(batch_size {c.train.batch_size} / {ws} ranks / {c.train.accum_steps} accum steps)")
    if check_paths and not c.data.synthetic:
        check_data_root(c.data.root, (c.data.train_split, c.data.val_split))
        for name, path in (("distill.teacher_checkpoint", c.distill.teacher_checkpoint),
                           ("model.pretrained", c.model.pretrained)):
            _require(path is None or Path(path).expanduser().is_file(), f"{name}: checkpoint '{path}' not found")
    if check_model:
        check_model_name(c.model.name)
        if c.distill.teacher:
            check_model_name(c.distill.teacher)


class _Dumper(yaml.SafeDumper):
    """Block mappings, one-line lists."""


_Dumper.add_representer(list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data,
                                                                              flow_style=True))


def dump(cfg: Dict[str, Any]) -> str:
    """YAML text of a config."""
    return yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
