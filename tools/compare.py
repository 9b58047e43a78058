#!/usr/bin/env python
"""vssm side by side with the official code of the same model and a timm reference, in one process.

    python tools/benchmark.py compare --official vmamba=PATH [--official localmamba=PATH ...] [--kernel-path DIR]
        [--models vmamba_tiny,...] [--reference convnext_tiny,swin_tiny_patch4_window7_224] [--batch 128]
        [--img 224] [--compile] [--rounds 3 --iters 10 --warmup-iters 3]
    python tools/benchmark.py compare --scan [--states 1,8,16] [--official ... --kernel-path DIR]
    python tools/benchmark.py compare --resolution-sweep [--models vmamba_tiny] [--resolutions 224,512,1024]
    python tools/benchmark.py compare --stability 1000 [--models vmamba_tiny,local_vmamba_tiny]

Model rows: for each model, the vssm model, the official model built from a checkout of the official repository
(``--official FAMILY=PATH``; the tool never downloads anything) and the ``--reference`` timm models, all at the
same batch, resolution and AMP bf16, timed interleaved (round by round, every model once per round; the median
round is reported): inference img/s, training img/s (forward, backward, AdamW step) and the peak memory of a
training step (its own parameters, gradients, optimizer state and activations), eager and, with ``--compile``,
compiled. The official code runs on its own CUDA extension (``selective_scan_cuda_oflex`` / ``_core`` or
mamba_ssm's ``selective_scan_cuda``), built for this GPU with ``tools/build_official_kernels.py`` and found on
``--kernel-path`` or ``sys.path``; a missing checkout, file, kernel or Python package is named, not guessed at.

``--scan``: the selective scan alone at each family's stage shapes (224x224 input) and each of ``--states``:
vssm's 1D ``selective_scan`` and fused ``scan2d`` (also in its deterministic mode) against the official kernels
found, forward and forward + backward, with the byte floor (every input read once, every output written once,
at the copy bandwidth measured on the spot). ``--resolution-sweep``: inference img/s x pixels per image at each
resolution against the first (linear cost: the ratio stays near 1), the batch scaled to keep the pixels per
batch. ``--stability N``: N AMP bf16 training steps on a fixed pool of synthetic batches; stops at the first
non-finite loss or gradient norm and exits with status 1.
"""

import argparse
import copy
import importlib
import importlib.machinery
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

KERNEL_MODULES = ("selective_scan_cuda_oflex", "selective_scan_cuda_core", "selective_scan_cuda")
BUILD_HINT = "python tools/build_official_kernels.py --out DIR --official FAMILY=PATH, then --kernel-path DIR"


@dataclass(frozen=True)
class Official:
    """How the official repository of a family builds a model: ``sys.path`` gets ``<checkout>/<path>``, then
    ``module.factory(**kwargs)``. ``kernels``: groups of CUDA extension names, one of each group must import."""
    family: str
    repo: str
    path: str
    module: str
    factory: str
    kwargs: dict = field(default_factory=dict)
    kernels: Tuple[Tuple[str, ...], ...] = ()
    drop_path_rate: float = 0.0  # the official factory's; given to the vssm model too

    @property
    def module_file(self) -> str:
        return f"{self.path}/{self.module.replace('.', '/')}.py"


# Facts read from the official repositories (VMamba 2ed52ea, LocalMamba 75e5d1f, EfficientVMamba 0bc5ee2,
# GroupMamba c1800ed): module, factory, configuration, and which extension each imports at module level.
_VMAMBA = dict(family="vmamba", repo="MzeroMiko/VMamba", path="classification", module="models.vmamba",
               kernels=(("selective_scan_cuda_oflex", "selective_scan_cuda_core", "selective_scan_cuda"),))
OFFICIAL: Dict[str, Official] = {
    "vmamba_tiny": Official(factory="vmamba_tiny_s1l8", drop_path_rate=0.2, **_VMAMBA),
    "vmamba_small": Official(factory="vmamba_small_s2l15", drop_path_rate=0.3, **_VMAMBA),
    "vmamba_base": Official(factory="vmamba_base_s2l15", drop_path_rate=0.6, **_VMAMBA),
    "local_vmamba_tiny": Official(
        "localmamba", "hunto/LocalMamba", "classification", "lib.models.local_vmamba", "local_vssm_tiny",
        kernels=(("selective_scan_cuda_core", "selective_scan_cuda"),), drop_path_rate=0.2),
    "efficient_vmamba_base": Official(  # classification/configs/vssm/vssm_efficient_base.yaml
        "efficientvmamba", "TerryPei/EfficientVMamba", "classification", "models.vmamba_efficient", "EfficientVSSM",
        kwargs=dict(depths=[2, 2, 9, 2], dims=96, d_state=16, dt_rank="auto", ssm_ratio=2.0, mlp_ratio=0.0,
                    downsample_version="v1", drop_path_rate=0.2),
        kernels=(("selective_scan_cuda",),), drop_path_rate=0.2),  # its selective_scan_vmamba_pt202 is not shipped
    "groupmamba_tiny": Official(
        "groupmamba", "Amshaker/GroupMamba", "classification", "models.groupmamba", "groupmamba_tiny",
        kernels=(("selective_scan_cuda_core",),)),
}
FAMILIES = sorted({o.family for o in OFFICIAL.values()})
# the extension each family's model runs on: the first of these it imported (as its own selection logic picks)
FAMILY_KERNELS = {"vmamba": ("selective_scan_cuda_oflex", "selective_scan_cuda_core", "selective_scan_cuda"),
                  "localmamba": ("selective_scan_cuda_core", "selective_scan_cuda"),
                  "efficientvmamba": ("selective_scan_cuda",), "groupmamba": ("selective_scan_cuda_core",)}


class OfficialUnavailable(RuntimeError):
    """The official model cannot be built here; the message says what is missing."""


# ---- the official models ----------------------------------------------------------------------------------

def parse_checkouts(items: Sequence[str]) -> Dict[str, Path]:
    """``["vmamba=/path", ...]`` -> ``{"vmamba": Path}``; unknown families and malformed items raise ValueError."""
    out = {}
    for item in items:
        family, sep, path = item.partition("=")
        if not sep or not path:
            raise ValueError(f"--official takes FAMILY=PATH, got {item!r}")
        if family not in FAMILIES:
            raise ValueError(f"--official: unknown family {family!r}; valid: {', '.join(FAMILIES)}")
        out[family] = Path(path).expanduser()
    return out


def _checkout(spec: Official, checkouts: Dict[str, Path]) -> Path:
    root = checkouts.get(spec.family)
    if root is None:
        raise OfficialUnavailable(
            f"no checkout of the official {spec.family} code: pass --official {spec.family}=PATH, a clone of "
            f"https://github.com/{spec.repo} (this tool downloads nothing)")
    if not root.is_dir():
        raise OfficialUnavailable(f"--official {spec.family}={root}: no such directory")
    if not (root / spec.module_file).is_file():
        raise OfficialUnavailable(f"--official {spec.family}={root}: not a checkout of {spec.repo} "
                                  f"({spec.module_file} is missing)")
    return root


def _find_kernels(spec: Official, kernel_paths: Sequence[Path]) -> List[str]:
    """The first importable extension of each of ``spec.kernels``; raises naming the missing ones."""
    for p in kernel_paths:
        if not Path(p).is_dir():
            raise OfficialUnavailable(f"--kernel-path {p}: no such directory")
    search = [str(p) for p in kernel_paths] + sys.path
    found = []
    for group in spec.kernels:
        hit = next((name for name in group if importlib.machinery.PathFinder.find_spec(name, search) is not None
                    or name in sys.modules), None)
        if hit is None:
            raise OfficialUnavailable(
                f"the official {spec.family} model needs the CUDA extension {' or '.join(group)}, which is not "
                f"importable from --kernel-path ({', '.join(map(str, kernel_paths)) or 'none given'}) or sys.path; "
                f"build it for this GPU: {BUILD_HINT}")
        found.append(hit)
    return found


def _timm_registry():
    import timm.models._registry as registry
    return registry, {k: v for k, v in vars(registry).items() if k.startswith("_model") or k.startswith("_module")}


def official_model(name: str, checkouts: Dict[str, Path], kernel_paths: Sequence[Path] = (),
                   **kwargs) -> Tuple[nn.Module, str]:
    """Build the official implementation of vssm model ``name`` from its checkout: ``(model, the extension it
    runs on)``. The checkout's modules are imported in isolation (several repositories name their package
    ``models``) and dropped from ``sys.modules`` afterwards; timm registrations they make are undone."""
    if name not in OFFICIAL:
        raise OfficialUnavailable(f"no official implementation known for {name!r}; known: {', '.join(OFFICIAL)}")
    spec = OFFICIAL[name]
    root = _checkout(spec, checkouts)
    _find_kernels(spec, kernel_paths)
    for p in map(str, kernel_paths):  # extensions stay importable: the official code may import them lazily
        if p not in sys.path:
            sys.path.append(p)
    registry, tables = _timm_registry()
    saved = copy.deepcopy(tables)
    saved_path = list(sys.path)
    code_root = str((root / spec.path).resolve())
    sys.path.insert(0, code_root)
    before = set(sys.modules)
    try:
        module = importlib.import_module(spec.module)
        model = getattr(module, spec.factory)(**spec.kwargs, **kwargs)
    except ModuleNotFoundError as err:
        raise OfficialUnavailable(f"importing {spec.module} from {root} failed: no module named {err.name!r} "
                                  f"(install it, or carry it to the GPU machine as a wheel)") from err
    except ImportError as err:  # e.g. an extension built for another torch
        raise OfficialUnavailable(f"importing {spec.module} from {root} failed: {err}") from err
    finally:
        sys.path[:] = saved_path
        ours = [m for m in set(sys.modules) - before
                if (getattr(sys.modules[m], "__file__", None) or "").startswith(code_root)]
        loaded = {m: sys.modules.pop(m) for m in ours}
        for m, mod in loaded.items():  # under a family-unique name, so torch.compile can still import them
            mod.__name__ = f"_official_{spec.family}.{m}"
            sys.modules[mod.__name__] = mod
            for value in vars(mod).values():  # its classes and functions follow the new name
                if callable(value) and getattr(value, "__module__", None) == m:
                    value.__module__ = mod.__name__
        for key, table in tables.items():
            table.clear()
            table.update(saved[key])
    imported = {v.__name__ for mod in loaded.values() for v in vars(mod).values() if isinstance(v, type(sys))}
    return model, next((k for k in FAMILY_KERNELS[spec.family] if k in imported), "none")


def vssm_model(name: str, **kwargs) -> nn.Module:
    import timm
    import vssm  # noqa: F401  (registers the models)
    spec = OFFICIAL.get(name)
    if spec is not None:
        kwargs.setdefault("drop_path_rate", spec.drop_path_rate)
    return timm.create_model(name, **kwargs)


def reference_model(name: str) -> nn.Module:
    import timm
    return timm.create_model(name)


# ---- timing -----------------------------------------------------------------------------------------------

def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable, iters: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / iters


def _static_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    tensors += [t for state in opt.state.values() for t in state.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


class Subject:
    """One model in one mode: ``infer()`` (AMP bf16, no grad) and ``train_step()`` (AMP bf16 forward, cross
    entropy, backward, AdamW step) on fixed synthetic batches."""

    def __init__(self, model_name: str, impl: str, model: nn.Module, batch: int, img: int, device: torch.device,
                 compiled: bool = False, compile_backend: str = "inductor", note: str = "",
                 channels_last: bool = True):
        self.model_name, self.impl, self.note = model_name, impl, note
        self.mode = "compiled" if compiled else "eager"
        self.device = device
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device).to(memory_format=layout)
        self.fn = torch.compile(self.model, backend=compile_backend) if compiled else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.05,
                                     fused=device.type == "cuda")
        g = torch.Generator(device="cpu").manual_seed(0)
        self.x = torch.randn(batch, 3, img, img, generator=g).to(device).contiguous(memory_format=layout)
        self.target = torch.randint(0, 1000, (batch,), generator=g).to(device)
        self.batch = batch
        self.times: Dict[str, List[float]] = {"infer": [], "train": []}
        self.peak_gib: Optional[float] = None
        self.error = ""  # why it was dropped from the timing, if it was

    def fail(self, what: str, err: Exception):
        first_line = next((line for line in str(err).splitlines() if line.strip()), "")
        self.error = f"{what} failed: {type(err).__name__}: {first_line}"[:300]
        self.times = {"infer": [], "train": []}
        self.model.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def infer(self):
        self.model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16):
            return self.fn(self.x)

    def loss(self):
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            out = self.fn(self.x)
            if isinstance(out, (tuple, list)):  # distillation heads in training mode
                out = out[0]
            return F.cross_entropy(out.float(), self.target)

    def train_step(self):
        self.model.train()
        loss = self.loss()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss

    def measure_peak(self):
        """Peak bytes of one training step, as if the model were alone on the device: its parameters, buffers
        and optimizer state plus what the step allocates on top."""
        if self.device.type != "cuda":
            return
        self.train_step()
        _sync(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self.train_step()
        _sync(self.device)
        step = torch.cuda.max_memory_allocated(self.device) - before
        self.peak_gib = (_static_bytes(self.model, self.opt) + step) / 2**30

    def img_per_s(self, what: str) -> Optional[float]:
        return self.batch / statistics.median(self.times[what]) if self.times[what] else None


def time_interleaved(subjects: Sequence[Subject], rounds: int, iters: int, warmup: int):
    """Each round times every subject's inference, then every subject's training step, so that clock and
    thermal drift fall on all alike; the first round also warms up (compilation, autotuning)."""
    for r in range(rounds):
        for what in ("infer", "train"):
            for s in subjects:
                if s.error:
                    continue
                fn = s.infer if what == "infer" else s.train_step
                try:
                    s.times[what].append(seconds_per_call(fn, iters, warmup if r == 0 else 1, s.device))
                except Exception as err:  # one model failing (a compiler error, say) must not lose the others
                    s.fail(what, err)
    for s in subjects:
        if not s.error:
            s.measure_peak()


def build_subjects(args, device: torch.device) -> Tuple[List[Subject], List[str]]:
    """Subjects for every model of ``--models`` (vssm, official) and every ``--reference``, per mode; and the
    messages of official models that could not be built."""
    checkouts = parse_checkouts(args.official)
    kernel_paths = [Path(p) for p in args.kernel_path]
    modes = (False, True) if args.compile else (False,)
    subjects, missing = [], []

    def add(model_name, impl, build, note=""):
        model = build()  # eager and compiled subjects share it (each has its own optimizer)
        for compiled in modes:  # the official code gets NCHW-contiguous input, as its own scripts give it
            subjects.append(Subject(model_name, impl, model, args.batch, args.img, device, compiled,
                                    args.compile_backend, note, channels_last=impl != "official"))

    for name in args.models:
        add(name, "vssm", lambda: vssm_model(name))
        try:
            model, kernel = official_model(name, checkouts, kernel_paths)
        except OfficialUnavailable as err:
            missing.append(f"{name} official: {err}")
        else:
            add(name, "official", lambda: model, note=kernel)
    for name in args.reference:
        add(name, "timm", lambda: reference_model(name))
    return subjects, missing


def compare_models(args, device: torch.device) -> List[Subject]:
    subjects, missing = build_subjects(args, device)
    for line in missing:
        print(f"MISSING {line}", flush=True)
    time_interleaved(subjects, args.rounds, args.iters, args.warmup_iters)
    print(f"\nbatch {args.batch}, {args.img}x{args.img}, AMP bf16, {_device_name(device)}, torch {torch.__version__}"
          f"{_triton_version()}; median of {args.rounds} interleaved rounds of {args.iters} calls")
    print(f"{'model':<22} {'impl':<9} {'mode':<9} {'infer img/s':>12} {'train img/s':>12} {'peak GiB':>9} "
          f"{'infer x':>8} {'train x':>8} {'mem x':>6}  kernels")
    official = {(s.model_name, s.mode): s for s in subjects if s.impl == "official"}
    for s in subjects:
        if s.error:
            print(f"{s.model_name:<22} {s.impl:<9} {s.mode:<9} FAILED {s.error}")
            continue
        inf, tr = s.img_per_s("infer"), s.img_per_s("train")
        ref = official.get((s.model_name, s.mode)) if s.impl == "vssm" else None
        ref = ref if ref is not None and not ref.error else None
        ratios = ["-", "-", "-"]
        if ref is not None:
            ratios[0] = f"{inf / ref.img_per_s('infer'):.2f}"
            ratios[1] = f"{tr / ref.img_per_s('train'):.2f}"
            if s.peak_gib is not None and ref.peak_gib:
                ratios[2] = f"{s.peak_gib / ref.peak_gib:.2f}"
        peak = f"{s.peak_gib:9.2f}" if s.peak_gib is not None else f"{'-':>9}"
        print(f"{s.model_name:<22} {s.impl:<9} {s.mode:<9} {inf:12.1f} {tr:12.1f} {peak} {ratios[0]:>8} "
              f"{ratios[1]:>8} {ratios[2]:>6}  {s.note}")
    print("x: vssm / official in the same mode (img/s: higher is better; memory: lower is better)")
    return subjects


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return ""
    return f", Triton {triton.__version__}"


# ---- linear cost in resolution ----------------------------------------------------------------------------

def resolution_sweep(args, device: torch.device) -> List[Tuple[str, str, int, int, float, float]]:
    """Inference img/s x pixels per image at each resolution, relative to the first resolution."""
    rows = []
    base_res = args.resolutions[0]
    for name in args.models:
        model = vssm_model(name)
        for compiled in ((False, True) if args.compile else (False,)):
            mode = "compiled" if compiled else "eager"
            first = None
            for res in args.resolutions:
                batch = max(1, round(args.batch * base_res ** 2 / res ** 2))
                s = Subject(name, "vssm", model, batch, res, device, compiled, args.compile_backend)
                t = statistics.median(seconds_per_call(s.infer, args.iters, args.warmup_iters if r == 0 else 1,
                                                       device) for r in range(args.rounds))
                px_per_s = batch * res * res / t
                first = first or px_per_s
                rows.append((name, mode, res, batch, batch / t, px_per_s / first))
                del s
    print(f"\nlinear cost: inference, AMP bf16, {_device_name(device)}; batch x pixels held at "
          f"{args.batch} x {base_res}^2")
    print(f"{'model':<22} {'mode':<9} {'res':>5} {'batch':>6} {'img/s':>10} {'px/s vs first':>14}")
    for name, mode, res, batch, ips, ratio in rows:
        flag = "" if abs(ratio - 1) <= 0.15 else "  (outside 15%)"
        print(f"{name:<22} {mode:<9} {res:>5} {batch:>6} {ips:10.1f} {ratio:14.3f}{flag}")
    return rows


# ---- stability --------------------------------------------------------------------------------------------

def stability(args, device: torch.device, build: Optional[Callable[[str], nn.Module]] = None) -> Dict[str, dict]:
    """``args.stability`` AMP bf16 training steps per model (AdamW, gradient clipping) over a pool of synthetic
    batches; stops a model at its first non-finite loss or gradient norm. ``build``: name -> model (vssm's)."""
    build = build or vssm_model
    results = {}
    for name in args.models:
        torch.manual_seed(0)
        model = build(name)
        s = Subject(name, "vssm", model, args.batch, args.img, device, args.compile, args.compile_backend)
        for group in s.opt.param_groups:
            group["lr"] = args.lr
        g = torch.Generator(device="cpu").manual_seed(1)
        pool = [(torch.randn(s.x.shape, generator=g).to(device).contiguous(memory_format=torch.channels_last),
                 torch.randint(0, 1000, (args.batch,), generator=g).to(device)) for _ in range(args.pool)]
        res = dict(steps=0, first_loss=None, last_loss=None, bad_step=None, max_grad_norm=0.0)
        model.train()
        for step in range(args.stability):
            s.x, s.target = pool[step % len(pool)]
            loss = s.loss()
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            value, norm = loss.item(), norm.item()
            if not (math.isfinite(value) and math.isfinite(norm)):
                res["bad_step"] = step
                res["last_loss"] = value
                break
            s.opt.step()
            s.opt.zero_grad(set_to_none=True)
            res["steps"] = step + 1
            res["first_loss"] = value if res["first_loss"] is None else res["first_loss"]
            res["last_loss"] = value
            res["max_grad_norm"] = max(res["max_grad_norm"], norm)
        results[name] = res
        verdict = (f"non-finite at step {res['bad_step']} (loss {res['last_loss']})" if res["bad_step"] is not None
                   else "all finite")
        print(f"{name}: {res['steps']} AMP bf16 steps, loss {res['first_loss']} -> {res['last_loss']}, max grad "
              f"norm {res['max_grad_norm']:.3g}: {verdict}", flush=True)
    return results


# ---- scan rows --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StageShapes:
    """The scans of a family's stages at 224x224: pattern, total channels C of the map (``K*C_k`` sequence
    channels: C_k = C, or C / K when the pattern splits), map sides, the family's d_state."""
    family: str
    pattern: str
    options: dict
    channels: Tuple[int, ...]
    sides: Tuple[int, ...]
    d_state: int
    per_sequence: bool = False


STAGES = {
    "vmamba_tiny": StageShapes("vmamba", "cross", {}, (96, 192, 384, 768), (56, 28, 14, 7), 1),
    "vmamba_small": StageShapes("vmamba", "cross", {}, (192, 384, 768, 1536), (56, 28, 14, 7), 1),
    "vmamba_base": StageShapes("vmamba", "cross", {}, (256, 512, 1024, 2048), (56, 28, 14, 7), 1),
    "local_vmamba_tiny": StageShapes("localmamba", "window", {"directions": ["h", "h_flip", "w7", "w7_flip"]},
                                     (192, 384, 768, 1536), (56, 28, 14, 7), 16, per_sequence=True),
    "efficient_vmamba_base": StageShapes("efficientvmamba", "atrous", {}, (192, 384), (56, 28), 16),
    "groupmamba_tiny": StageShapes("groupmamba", "group", {}, (64, 128, 348, 448), (56, 28, 14, 7), 1),
}


def _official_scan(name: str, module):
    """``(forward, forward + backward)`` closures over the official extension ``name`` (the argument order of
    its ``fwd`` / ``bwd``), taking ``(u, delta, A, B, C, D, delta_bias)`` with softplus."""
    if name == "selective_scan_cuda":  # mamba_ssm: z and the recomputation arguments are None / False
        def fwd(u, d, A, B, C, D, bias):
            return module.fwd(u, d, A, B, C, D, None, bias, True)

        def bwd(u, d, A, B, C, D, bias, dout, x):
            return module.bwd(u, d, A, B, C, D, None, bias, dout, x, None, None, True, False)
    else:
        extra = (1, True) if name == "selective_scan_cuda_oflex" else (1,)  # nrows (and oflex: fp32 output)

        def fwd(u, d, A, B, C, D, bias):
            return module.fwd(u, d, A, B, C, D, bias, True, *extra)

        def bwd(u, d, A, B, C, D, bias, dout, x):
            return module.bwd(u, d, A, B, C, D, bias, dout, x, True, 1)

    def fwd_bwd(u, d, A, B, C, D, bias):
        out, x = fwd(u, d, A, B, C, D, bias)[:2]
        return bwd(u, d, A, B, C, D, bias, torch.ones_like(out), x)

    return fwd, fwd_bwd


def scan_rows(args) -> List[tuple]:
    """Forward and forward + backward ms of vssm's scans and the official kernels at the stage shapes."""
    import triton.testing
    import benchmark  # tools/benchmark.py: input maker, byte counts, bandwidth
    from vssm import kernels, scans
    hbm = args.hbm_gbs or benchmark.measure_hbm_gbs()
    dtype = torch.bfloat16
    for p in args.kernel_path:
        sys.path.append(str(p))
    official = {}
    for name in KERNEL_MODULES:
        try:
            official[name] = importlib.import_module(name)
        except ImportError:
            pass
    print(f"official kernels importable: {', '.join(official) or 'none'} (--kernel-path, sys.path)")

    def bench(fn):
        return triton.testing.do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median")

    rows = []
    for model in args.models:
        st = STAGES[model]
        pattern = scans.build(st.pattern, **st.options)
        mine = next((k for k in FAMILY_KERNELS[st.family] if k in official), None)
        for stage, (channels, side) in enumerate(zip(st.channels, st.sides)):
            K, L = pattern.K, pattern.sequence_length(side, side)
            ck = pattern.channels_per_sequence(channels)
            for n in args.states:
                b = args.batch
                t = benchmark.make_inputs(b, K, ck, n, L, dtype, "cuda", requires_grad=True)
                f1, b1 = benchmark.scan_bytes(b, K, ck, n, L, dtype)
                es = 2
                x = torch.randn(b, side, side, channels, device="cuda", dtype=dtype).permute(0, 3, 1, 2)
                x.requires_grad_(True)
                out_elems = b * (K * ck if st.per_sequence else channels) * side * side
                io2 = (x.numel() + t["delta"].numel() + 2 * b * K * n * L) * es
                f2, b2 = io2 + out_elems * 4, 2 * io2 + out_elems * 4
                grads = [t["u"], t["delta"], t["B"], t["C"]]
                g1 = torch.ones_like(t["u"])

                def scan():
                    return kernels.selective_scan(**t, backend="triton")

                def fused():
                    return kernels.scan2d(x, t["delta"], t["A"], t["B"], t["C"], t["D"], t["delta_bias"],
                                          pattern=pattern, per_sequence=st.per_sequence)

                paths = [("vssm scan", scan, g1, grads, (f1, b1)),
                         ("vssm scan2d", fused, None, [x, t["delta"], t["B"], t["C"]], (f2, b2))]
                for label, fn, gy, wrt, (fb, bb) in paths:
                    for det in (False, True) if label == "vssm scan2d" else (False,):
                        torch.use_deterministic_algorithms(det)
                        with torch.no_grad():
                            y = fn()
                        gy_ = gy if gy is not None else torch.ones_like(y)
                        ms_f = bench(lambda: _no_grad(fn))
                        ms_fb = bench(lambda: torch.autograd.grad(fn(), wrt, gy_))
                        rows.append((model, stage, channels, side, n, label + (" det" if det else ""), ms_f, ms_fb,
                                     fb / hbm / 1e6, (fb + bb) / hbm / 1e6))
                    torch.use_deterministic_algorithms(False)
                plain = [v.detach() for v in t.values()]
                for name, module in official.items():
                    fwd, fwd_bwd = _official_scan(name, module)
                    try:
                        ms_f, ms_fb = bench(lambda: fwd(*plain)), bench(lambda: fwd_bwd(*plain))
                    except RuntimeError as err:  # e.g. a d_state the build does not support
                        print(f"{name} at {model} stage {stage} N {n}: {str(err).splitlines()[0]}")
                        continue
                    label = f"{name}{' (family)' if name == mine else ''}"
                    rows.append((model, stage, channels, side, n, label, ms_f, ms_fb, f1 / hbm / 1e6,
                                 (f1 + b1) / hbm / 1e6))
    print(f"\nscan rows: batch {args.batch}, bf16 activations, fp32 A/D/bias, {torch.cuda.get_device_name()}, "
          f"HBM {hbm:.0f} GB/s{' (given)' if args.hbm_gbs else ' (measured copy)'}, torch {torch.__version__}"
          f"{_triton_version()}")
    print(f"{'model':<22} {'st':>2} {'C':>5} {'HxW':>7} {'N':>3} {'path':<34} {'fwd ms':>8} {'f+b ms':>8} "
          f"{'floor f':>8} {'floor fb':>8} {'% floor fb':>10}")
    for model, stage, c, side, n, label, ms_f, ms_fb, fl_f, fl_fb in rows:
        print(f"{model:<22} {stage:>2} {c:>5} {f'{side}x{side}':>7} {n:>3} {label:<34} {ms_f:8.3f} {ms_fb:8.3f} "
              f"{fl_f:8.3f} {fl_fb:8.3f} {100 * fl_fb / ms_fb:10.1f}")
    return rows


def _no_grad(fn):
    with torch.no_grad():
        return fn()


# ---- command line -----------------------------------------------------------------------------------------

def _int_list(text: str) -> List[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(text: str) -> List[str]:
    return [v for v in text.split(",") if v]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_arguments(p: argparse.ArgumentParser):
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--scan", action="store_true", help="scan-level rows at each family's stage shapes")
    mode.add_argument("--resolution-sweep", action="store_true", help="inference img/s x pixels per resolution")
    mode.add_argument("--stability", type=_positive, metavar="N", help="N AMP bf16 training steps per model")
    p.add_argument("--models", type=_names, default=_names("vmamba_tiny"),
                   help=f"vssm models (comma-separated); with an official counterpart: {', '.join(OFFICIAL)}")
    p.add_argument("--official", action="append", default=[], metavar="FAMILY=PATH",
                   help=f"checkout of an official repository ({', '.join(FAMILIES)}); repeat per family")
    p.add_argument("--kernel-path", action="append", default=[], metavar="DIR",
                   help="folder holding the official CUDA extensions (tools/build_official_kernels.py --out)")
    p.add_argument("--reference", type=_names, default=_names("convnext_tiny,swin_tiny_patch4_window7_224"),
                   help="timm reference models")
    p.add_argument("--batch", type=_positive, default=128)
    p.add_argument("--img", type=_positive, default=224)
    p.add_argument("--resolutions", type=_int_list, default=[224, 512, 1024])
    p.add_argument("--states", type=_int_list, default=[1, 8, 16], help="d_state values of the scan rows")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--rounds", type=_positive, default=3)
    p.add_argument("--iters", type=_positive, default=10)
    p.add_argument("--warmup-iters", type=_positive, default=3)
    p.add_argument("--warmup", type=_positive, default=25, help="do_bench warm-up ms of the scan rows")
    p.add_argument("--rep", type=_positive, default=100, help="do_bench ms of the scan rows")
    p.add_argument("--hbm-gbs", type=float, default=None, help="HBM bandwidth for the floors instead of measuring")
    p.add_argument("--lr", type=float, default=1e-3, help="stability: AdamW learning rate")
    p.add_argument("--clip-grad", type=float, default=5.0, help="stability: gradient norm clip")
    p.add_argument("--pool", type=_positive, default=8, help="stability: synthetic batches cycled through")
    p.add_argument("--device", default="cuda", help="cuda (figures), or cpu (tiny models: checks the harness)")


def run(args) -> int:
    """Run the mode ``args`` asks for; the process exit status."""
    import timm
    import vssm  # noqa: F401  (registers the models)
    try:
        parse_checkouts(args.official)
    except ValueError as err:
        raise SystemExit(f"compare: {err}") from None
    known = set(timm.list_models())
    unknown = [m for m in args.models + args.reference if m not in known]
    if unknown:
        raise SystemExit(f"compare: unknown model(s) {', '.join(unknown)}; vssm models with official code: "
                         f"{', '.join(OFFICIAL)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("compare: --device cuda but no CUDA device is visible (--device cpu checks the harness)")
    if args.scan:
        if device.type != "cuda":
            raise SystemExit("compare --scan needs a CUDA device (the Triton and official kernels)")
        unknown = [m for m in args.models if m not in STAGES]
        if unknown:
            raise SystemExit(f"compare --scan: no stage shapes for {', '.join(unknown)}; known: {', '.join(STAGES)}")
        scan_rows(args)
        return 0
    if args.resolution_sweep:
        resolution_sweep(args, device)
        return 0
    if args.stability:
        results = stability(args, device)
        return 1 if any(r["bad_step"] is not None for r in results.values()) else 0
    compare_models(args, device)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
