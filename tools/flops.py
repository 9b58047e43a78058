#!/usr/bin/env python
"""FLOPs and parameter table for vssm (or any timm) models.

Counts with ``torch.utils.flop_counter``; the selective scan is one custom op (``vssm::selective_scan``)
counted with the formula of the VMamba code (``flops_selective_scan_fn``: ``9*B*L*D*N + B*D*L`` for a scan
with D skip and no z, D = all scanned channels). On CUDA the mixers run the fused ``vssm::scan2d`` op instead:
its scan part is counted the same way and its step-size projection as the matmul it replaces, so both paths
give the same numbers.  Reported GFLOPs use the convention of the papers (fvcore):
one multiply-add = one FLOP, so torch's matmul/conv counts (2 per multiply-add) are halved; the scan formula
is already in that convention.  By default the model runs on the ``meta`` device (shapes only, no compute).

    python tools/flops.py vmamba_tiny vmamba_small vmamba_base --img-size 224
    python tools/flops.py 'vmamba*' --img-size 224 --img-size 512 768 --markdown   # 224x224 and 512x768
"""
from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import timm  # noqa: E402
from vssm import kernels  # noqa: E402,F401  (registers vssm::selective_scan and its flop formula)

_scan2d_flops = sys.modules["vssm.kernels.scan2d"]._scan2d_flops  # the fused op's formula (scan + projection)

try:
    import vssm  # noqa: E402,F401  (registers the vssm models with timm)
except ImportError:  # pragma: no cover
    vssm = None

# Published (paper / official README) GFLOPs at 224x224, head included.
PUBLISHED_GFLOPS = {
    "vmamba_tiny": 4.9,
    "vmamba_small": 8.7,
    "vmamba_base": 15.4,
    "vanilla_vmamba_tiny": 5.6,
    "vmamba_tiny_s2l5": 4.9,  # official assets/performance.md (corrected v0 counts: 11.2, 18.0)
    "vanilla_vmamba_small": 11.2,
    "vanilla_vmamba_base": 18.0,
    "efficient_vmamba_tiny": 0.8,  # EfficientVMamba paper / official README
    "efficient_vmamba_small": 1.3,
    "efficient_vmamba_base": 4.0,
    "local_vmamba_tiny": 5.7,  # LocalMamba paper / official README
    "local_vmamba_small": 11.4,
    "groupmamba_tiny": 4.5,  # GroupMamba paper
    "groupmamba_small": 7.0,
    "groupmamba_base": 14.0,
    "mambavision_tiny": 4.4,  # MambaVision official README
    "mambavision_tiny2": 5.1,
    "mambavision_small": 7.5,
    "mambavision_base": 15.0,
    "mambavision_large": 34.9,
    "mambavision_large2": 37.5,
    # VSSD README / configs (fvcore): its matmul handler counts the SSD's (b, 1, ., .) @ (b, H, ., .) products once
    # instead of H times, so these are 2*L*N*d_inner*(1 - 1/H) per SSD block below the count here (tiny: -0.22G)
    "vssd_micro": 2.3,
    "vssd_tiny": 4.47,
    "vssd_small": 7.37,
    "vssd_base": 16.1,
    # EfficientViM (timm's model) official README (fvcore); M4 at its 256x256 resolution, not listed here
    "efficientvim_m1": 0.239,
    "efficientvim_m2": 0.355,
    "efficientvim_m3": 0.656,
}

# ops whose count is already in the one-FLOP-per-multiply-add convention (the scan formulas)
_NATIVE_CONVENTION = {"vssm.selective_scan.default", "vssm.selective_scan", "vssm.scan2d.default", "vssm.scan2d"}
_SCAN2D_PROJECTION = "vssm.scan2d.dt_proj"  # the fused op's step-size projection, in multiply-adds


def _scan2d_split(projections: List[int]):
    """Formula for ``vssm::scan2d`` that returns its scan part and appends the multiply-adds of its step-size
    projection (``delta`` low-rank with ``dt_proj``) to ``projections``."""
    def formula(x, delta, A, B, *args, out_val=None, **kwargs) -> int:
        projection = x.shape[0] * A.shape[0] * delta.shape[2] * B.shape[-1] if delta.dim() == 4 else 0
        projections.append(projection)
        return _scan2d_flops(x, delta, A, B, *args, out_val=out_val, **kwargs) - 2 * projection
    formula._get_raw = True  # called with the op's tensors, as the registered formula's wrapper
    return formula


def _op_name(op) -> str:
    return str(op).replace("aten.", "").replace("::", ".")


def count_model(model: torch.nn.Module, input_size: Sequence[int], batch: int = 1,
                device: str = "meta") -> Dict[str, float]:
    """Return dict(params, flops, scan_flops, per_op) for one forward pass of ``model``.

    ``flops`` is in the multiply-add convention (see module docstring); ``per_op`` maps op name -> count.
    """
    params = sum(p.numel() for p in model.parameters())
    model = model.eval().to(device)
    x = torch.randn(batch, *input_size, device=device)
    projections: List[int] = []
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.vssm.scan2d: _scan2d_split(projections)})
    with torch.no_grad(), counter:
        model(x)
    per_op: Dict[str, float] = defaultdict(float)
    for op, n in counter.get_flop_counts()["Global"].items():
        name = _op_name(op)
        per_op[name] += n if name in _NATIVE_CONVENTION else n / 2
    if sum(projections):
        per_op[_SCAN2D_PROJECTION] = float(sum(projections))
    scan = sum(v for k, v in per_op.items() if k in _NATIVE_CONVENTION)  # the projection is a matmul, not scan
    return dict(params=params, flops=sum(per_op.values()), scan_flops=scan, per_op=dict(per_op))


def resolve_names(patterns: Sequence[str]) -> List[str]:
    names: List[str] = []
    for p in patterns:
        if any(c in p for c in "*?["):
            names += [n for n in timm.list_models(p) if n not in names]
        elif p not in names:
            names.append(p)
    return names


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model names or wildcards (timm.list_models)")
    ap.add_argument("--img-size", type=int, nargs="+", action="append", metavar=("H", "W"),
                    help="input size: H (square) or H W; repeat the flag for several sizes (default 224)")
    ap.add_argument("--in-chans", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--num-classes", type=int, default=None)
    ap.add_argument("--device", default="meta", help="'meta' (no compute, default) or 'cpu' / 'cuda'")
    ap.add_argument("--per-op", action="store_true", help="also print the count of every op")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table")
    args = ap.parse_args(argv)
    sizes = []
    for size in args.img_size or [[224]]:
        if len(size) > 2:
            ap.error(f"--img-size takes H or H W, got {' '.join(map(str, size))}")
        sizes.append((size[0], size[-1]))

    rows = []
    for name in resolve_names(args.models):
        kwargs = dict(in_chans=args.in_chans)
        if args.num_classes is not None:
            kwargs["num_classes"] = args.num_classes
        for size in sizes:
            with torch.device("cpu"):
                model = timm.create_model(name, **kwargs)
            try:
                r = count_model(model, (args.in_chans, *size), batch=args.batch, device=args.device)
            except (NotImplementedError, RuntimeError) as err:
                if args.device != "meta":
                    raise
                # some op lacks a meta kernel: count on real CPU tensors instead
                print(f"note: {name} cannot run on 'meta' ({type(err).__name__}); counting on cpu", file=sys.stderr)
                model = timm.create_model(name, **kwargs)
                r = count_model(model, (args.in_chans, *size), batch=args.batch, device="cpu")
            pub = PUBLISHED_GFLOPS.get(name) if (size == (224, 224) and args.batch == 1) else None
            rows.append((name, size, r, pub))
            if args.per_op:
                for op, n in sorted(r["per_op"].items(), key=lambda kv: -kv[1]):
                    print(f"  {name} {size[0]}x{size[1]}: {op:40s} {n / 1e9:9.4f} G")

    head = ["model", "input", "params (M)", "GFLOPs", "scan GFLOPs", "published", "diff"]
    table = []
    for name, size, r, pub in rows:
        diff = f"{100 * (r['flops'] / 1e9 - pub) / pub:+.1f}%" if pub else ""
        table.append([name, f"{args.batch}x{args.in_chans}x{size[0]}x{size[1]}", f"{r['params'] / 1e6:.2f}",
                      f"{r['flops'] / 1e9:.2f}", f"{r['scan_flops'] / 1e9:.3f}", f"{pub}G" if pub else "", diff])
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" for _ in head) + "|")
        for row in table:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(str(c)) for c in col) for col in zip(head, *table)]
        for row in [head] + table:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
