"""ONNX export of vssm models (and any timm model), checked against the eager model in onnxruntime.

``torch.onnx.export(model, (x,))`` is the exporter torch recommends: since torch 2.9 its default is the
``torch.export``-based one (``dynamo=True``), translated with onnxscript. Under it the scan ops of
:mod:`vssm.kernels` do not go through their custom ops: :func:`vssm.kernels.selective_scan` runs the chunked
PyTorch form with its two loops as ``torch.ops.higher_order.scan``, which the exporter writes as ONNX ``Scan``
nodes, and the scan patterns' index maps become constants. The file holds standard ONNX operators only.

Axes: the batch is dynamic; height and width are fixed at the export size (the index maps of the scan patterns
and the chunk layout of the scan are built for one feature-map size; export once per input size).

    vssm-export vmamba_tiny -o vmamba_tiny.onnx                      # random weights, 224x224
    vssm-export local_vmamba_small --checkpoint local_vssm_small.ckpt --img-size 256 320
    vssm-export vmamba_tiny --features-only --out-indices 1 2 3     # backbone: one output per index
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ["export_onnx", "onnx_parity", "main"]

TOLERANCE = 1e-4  # max abs difference allowed, relative to the largest magnitude of each eager output


def _outputs(result) -> List[torch.Tensor]:
    return list(result) if isinstance(result, (list, tuple)) else [result]


def export_onnx(model: nn.Module, path: str, sample: torch.Tensor, dynamic_batch: bool = True) -> str:
    """Write ``model`` (put in eval mode) traced on ``sample (B, C, H, W)`` to ``path`` as one ONNX file.

    With ``dynamic_batch`` the first axis of the input and of every output is the symbolic ``batch``
    (a ``sample`` batch of 2 or more keeps the tracer from specialising it to 1). Returns ``path``."""
    model.eval()
    # a fresh dynamo cache: the chunked scan's torch.scan compiles its step function, and a guard left by an
    # earlier export (another model or size in the same process) crashed dynamo's recompile-reason code
    torch._dynamo.reset()
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    program = torch.onnx.export(model, (sample,), dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False)
    program.save(path, external_data=False)
    return path


def onnx_parity(path: str, model: nn.Module, inputs: Sequence[torch.Tensor]) -> List[Dict[str, float]]:
    """Run the ONNX file in onnxruntime (CPU) and the eager model on each input: per input and output, the max
    abs difference, the eager output's scale (max magnitude) and their ratio."""
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rows = []
    model.eval()
    for x in inputs:
        with torch.no_grad():
            expected = _outputs(model(x))
        got = session.run(None, {name: x.numpy()})
        if len(got) != len(expected):
            raise AssertionError(f"{path}: {len(got)} ONNX outputs, the eager model gives {len(expected)}")
        for i, (e, g) in enumerate(zip(expected, got)):
            if tuple(g.shape) != tuple(e.shape):
                raise AssertionError(f"{path}: output {i} has shape {tuple(g.shape)} in onnxruntime, "
                                     f"{tuple(e.shape)} eager (input {tuple(x.shape)})")
            diff = (torch.from_numpy(g) - e).abs().max().item()
            scale = e.abs().max().item()
            rows.append(dict(input=tuple(x.shape), output=i, max_abs=diff, scale=scale,
                             relative=diff / max(scale, 1e-30)))
    return rows


def _build_model(name: str, checkpoint: Optional[str], features_only: bool, out_indices: Optional[Sequence[int]],
                 num_classes: Optional[int]) -> nn.Module:
    import timm
    import vssm  # noqa: F401  (registers the vssm models with timm)
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; close names: {', '.join(close)}" if close else ""
        raise SystemExit(f"vssm-export: unknown model {name!r} (not a timm or vssm model name){hint}")
    kwargs = {}
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise SystemExit(f"vssm-export: checkpoint file not found: {checkpoint}")
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=checkpoint))
    if features_only:
        kwargs["features_only"] = True
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return timm.create_model(name, **kwargs).eval()


def _parse(argv):
    p = argparse.ArgumentParser(prog="vssm-export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="timm model name (vssm's or any other)")
    p.add_argument("--checkpoint", help="weights file to load (official or timm layout); default: random init")
    p.add_argument("-o", "--output", help="the .onnx file to write (default: MODEL.onnx)")
    p.add_argument("--img-size", type=int, nargs="+", metavar="N", help="H [W] of the input (default: the model's)")
    p.add_argument("--batch", type=int, default=2, help="batch of the traced sample and of the parity check")
    p.add_argument("--static-batch", action="store_true", help="fix the batch axis (default: dynamic)")
    p.add_argument("--features-only", action="store_true", help="export the backbone (one output per stage)")
    p.add_argument("--out-indices", type=int, nargs="+", help="with --features-only: the stages to output")
    p.add_argument("--num-classes", type=int, help="classifier size (as timm's create_model)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime parity check")
    args = p.parse_args(argv)
    if args.img_size is not None and not 1 <= len(args.img_size) <= 2:
        p.error(f"--img-size takes H or H W, got {len(args.img_size)} numbers")
    if args.img_size is not None and min(args.img_size) < 1:
        p.error(f"--img-size must be positive, got {args.img_size}")
    if args.batch < 1:
        p.error(f"--batch must be at least 1, got {args.batch}")
    if args.out_indices is not None and not args.features_only:
        p.error("--out-indices needs --features-only")
    return args


def _input_size(model: nn.Module, img_size: Optional[Sequence[int]]) -> Tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    chans, height, width = cfg.get("input_size", (3, 224, 224))
    chans = getattr(model, "in_chans", chans)
    if img_size is not None:
        height, width = img_size[0], img_size[-1]
    return chans, height, width


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Export, then print the parity of onnxruntime against the eager model; 1 if it is off (> 1e-4 relative)."""
    args = _parse(argv)
    model = _build_model(args.model, args.checkpoint, args.features_only, args.out_indices, args.num_classes)
    chans, height, width = _input_size(model, args.img_size)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(args.batch, chans, height, width, generator=generator)
    try:
        with torch.no_grad():
            model(sample)  # bad sizes raise the model's own error here, not deep inside the exporter
    except ValueError as err:
        raise SystemExit(f"vssm-export: {args.model} cannot take a {height}x{width} input: {err}") from None
    output = args.output or f"{args.model}.onnx"
    export_onnx(model, output, sample, dynamic_batch=not args.static_batch)
    batch = "batch" if args.static_batch else "batch*"
    print(f"wrote {output} ({os.path.getsize(output) / 2**20:.1f} MiB): input ({batch}, "
          f"{chans}, {height}, {width}){'' if args.static_batch else ', * dynamic'}")
    if args.no_check:
        return 0
    inputs = [sample] if args.static_batch else [sample, torch.randn(args.batch + 1, chans, height, width,
                                                                     generator=generator)]
    rows = onnx_parity(output, model, inputs)
    worst = max(r["relative"] for r in rows)
    for r in rows:
        print(f"onnxruntime vs eager: input {r['input']} output {r['output']}: max abs diff {r['max_abs']:.3e}, "
              f"scale {r['scale']:.3e}, relative {r['relative']:.2e}")
    ok = worst <= TOLERANCE
    print(f"parity {'ok' if ok else 'FAILED'}: worst relative difference {worst:.2e} (tolerance {TOLERANCE:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
