#!/usr/bin/env python
"""Benchmark the selective scan (and, later, whole models) on the GPU.

    python tools/benchmark.py scan [--batch 128 --groups 4 --channels 96 --length 3136 --state 1 --dtype bf16]
                                   [--backends triton,chunked] [--check] [--sweep]

For every backend: forward and forward+backward time (median of ``triton.testing.do_bench``), the bytes that
must move through device memory (every input read once, every output written once), the GB/s that time
implies, the HBM-roofline floor for those bytes and the fraction of it reached. The HBM bandwidth is measured
on the spot with a large device-to-device copy (bytes read + written), unless ``--hbm-gbs`` is given.

``--check`` prints max errors of each backend (forward and every gradient) against the float64 sequential
reference at a reduced batch. ``--sweep`` times the Triton kernels over a grid of block sizes.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_inputs(batch, groups, d, n, length, dtype, device, requires_grad=False):
    channels = groups * d
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, device=device, generator=g) * scale

    t = dict(u=rnd(batch, channels, length), delta=rnd(batch, channels, length, scale=0.5),
             A=-torch.rand(channels, n, device=device, generator=g) - 0.01,
             B=rnd(batch, groups, n, length), C=rnd(batch, groups, n, length),
             D=rnd(channels), delta_bias=rnd(channels, scale=0.5))
    # the models keep A, D and delta_bias in float32 (parameters); activations in the AMP dtype
    out = {k: (v if k in ("A", "D", "delta_bias") else v.to(dtype)) for k, v in t.items()}
    if requires_grad:
        for v in out.values():
            v.requires_grad_(True)
    return out


def measure_hbm_gbs(device="cuda"):
    import triton.testing
    x = torch.empty(1 << 30, dtype=torch.uint8, device=device)  # 1 GiB
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=50, rep=200, return_mode="median")
    return 2 * x.numel() / ms / 1e6


def scan_bytes(batch, groups, d, n, length, dtype):
    """(forward bytes, backward bytes) that must move: inputs read once, outputs written once."""
    es = torch.empty((), dtype=dtype).element_size()
    seq = batch * groups * d * length * es  # u, delta, y, dy, du, ddelta each
    bc = batch * groups * n * length * es  # B, C, dB, dC each
    fwd = 3 * seq + 2 * bc  # read u, delta, B, C; write y
    bwd = 5 * seq + 4 * bc  # read u, delta, dy, B, C; write du, ddelta, dB, dC
    return fwd, bwd


def bench_scan(args):
    import triton.testing
    import kernels
    device = "cuda"
    dtype = DTYPES[args.dtype]
    b, G, d, n, L = args.batch, args.groups, args.channels, args.state, args.length
    hbm = args.hbm_gbs or measure_hbm_gbs()
    fwd_bytes, bwd_bytes = scan_bytes(b, G, d, n, L, dtype)
    print(f"scan shape: batch {b}, groups {G} x {d} channels, L {L}, N {n}, {args.dtype}; "
          f"HBM {hbm:.0f} GB/s ({'given' if args.hbm_gbs else 'measured, copy'})")
    inputs = make_inputs(b, G, d, n, L, dtype, device, requires_grad=True)
    grad_y = torch.randn_like(inputs["u"])
    rows = []
    for backend in args.backends.split(","):
        def fwd():
            with torch.no_grad():
                return kernels.selective_scan(**inputs, backend=backend)

        def fwd_bwd():
            y = kernels.selective_scan(**inputs, backend=backend)
            return torch.autograd.grad(y, list(inputs.values()), grad_y)

        try:
            t_f = triton.testing.do_bench(fwd, warmup=args.warmup, rep=args.rep, return_mode="median")
            t_fb = triton.testing.do_bench(fwd_bwd, warmup=args.warmup, rep=args.rep, return_mode="median")
        except torch.OutOfMemoryError:
            print(f"{backend}: out of memory")
            torch.cuda.empty_cache()
            continue
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd()
        peak = torch.cuda.max_memory_allocated() / 2**30
        for what, t, nbytes in (("forward", t_f, fwd_bytes), ("fwd+bwd", t_fb, fwd_bytes + bwd_bytes),
                                ("bwd (diff)", t_fb - t_f, bwd_bytes)):
            floor = nbytes / hbm / 1e6
            rows.append((backend, what, t, nbytes / t / 1e6, floor, 100 * floor / t, peak))
    print(f"{'backend':<10} {'pass':<11} {'ms':>9} {'GB/s':>8} {'floor ms':>9} {'% roofline':>10} {'peak GiB':>9}")
    for backend, what, t, gbs, floor, pct, peak in rows:
        print(f"{backend:<10} {what:<11} {t:9.3f} {gbs:8.0f} {floor:9.3f} {pct:10.1f} {peak:9.2f}")
    return rows


def check_scan(args):
    """Max abs / relative error of each backend vs the float64 reference, every dtype, at a small batch."""
    import kernels
    from kernels.reference import selective_scan_reference
    device = "cuda"
    b = min(args.batch, args.check_batch)
    G, d, n, L = args.groups, args.channels, args.state, args.length
    print(f"check vs float64 reference: batch {b}, groups {G} x {d}, L {L}, N {n}")
    print(f"{'backend':<8} {'dtype':<5} {'tensor':<11} {'max abs err':>12} {'max rel err':>12}")
    for dtype_name in ("fp32", "fp16", "bf16"):
        inputs = make_inputs(b, G, d, n, L, DTYPES[dtype_name], device, requires_grad=True)
        grad_y = torch.randn_like(inputs["u"])
        x = {k: v.detach().double().requires_grad_(True) for k, v in inputs.items()}
        y_ref = selective_scan_reference(*x.values(), True)
        refs = (y_ref.detach(), *torch.autograd.grad(y_ref, list(x.values()), grad_y.double()))
        for backend in args.backends.split(","):
            if backend not in ("triton",):
                continue
            y = kernels.selective_scan(**inputs, backend=backend)
            outs = (y.detach(), *torch.autograd.grad(y, list(inputs.values()), grad_y))
            for name, o, r in zip(("y", *inputs), outs, refs):
                err = (o.double() - r).abs().max().item()
                print(f"{backend:<8} {dtype_name:<5} {name:<11} {err:12.3e} {err / r.abs().max().item():12.3e}")


def sweep_scan(args):
    import triton
    import triton.testing
    from kernels import triton_scan as ts
    device = "cuda"
    dtype = DTYPES[args.dtype]
    b, G, d, n, L = args.batch, args.groups, args.channels, args.state, args.length
    hbm = args.hbm_gbs or measure_hbm_gbs()
    fwd_bytes, bwd_bytes = scan_bytes(b, G, d, n, L, dtype)
    inputs = make_inputs(b, G, d, n, L, dtype, device)
    vals = list(inputs.values())
    grad_y = torch.randn_like(inputs["u"])
    print(f"{'kernel':<8} {'BLOCK_D':>7} {'BLOCK_L':>7} {'warps':>5} {'pref':>4} {'ms':>8} {'% roofline':>10}")
    results = []
    np2 = triton.next_power_of_2(n)
    for bd, bl, w in itertools.product((1, 2, 4, 8, 16), (32, 64, 128, 256), (4, 8)):
        per_thread = bd * np2 * bl // (32 * w)
        if not 2 <= per_thread <= 16 or (np2 == 1 and bl < 64) or (np2 > 1 and bl > 128):
            continue
        ts.CONFIG_OVERRIDE.clear()
        ts.CONFIG_OVERRIDE.update(BLOCK_D=bd, BLOCK_L=bl, num_warps=w)
        try:
            if per_thread >= 4 and "fwd" in args.sweep_kernels:
                t = triton.testing.do_bench(lambda: ts.forward(*vals, True), warmup=10, rep=40,
                                            return_mode="median")
                results.append(("fwd", bd, bl, w, "-", t, 100 * fwd_bytes / hbm / 1e6 / t))
            if per_thread <= 8 and "bwd" in args.sweep_kernels:
                for prefetch in (False, True):
                    ts.CONFIG_OVERRIDE["PREFETCH"] = prefetch
                    t = triton.testing.do_bench(lambda: ts.backward(grad_y, *vals, True), warmup=10, rep=40,
                                                return_mode="median")
                    results.append(("bwd", bd, bl, w, "P" if prefetch else "-", t,
                                    100 * bwd_bytes / hbm / 1e6 / t))
        except Exception as e:  # noqa: BLE001 - a config the compiler rejects (registers, shared memory)
            print(f"config {bd} {bl} {w}: {type(e).__name__}: {str(e)[:100]}")
    ts.CONFIG_OVERRIDE.clear()
    for kind in ("fwd", "bwd"):
        best = sorted((r for r in results if r[0] == kind), key=lambda r: r[5])[: args.top]
        for r in best:
            print(f"{r[0]:<8} {r[1]:>7} {r[2]:>7} {r[3]:>5} {r[4]:>4} {r[5]:8.3f} {r[6]:10.1f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scan", help="selective scan alone")
    s.add_argument("--batch", type=int, default=128)
    s.add_argument("--groups", type=int, default=4, help="K sequences (groups of B/C)")
    s.add_argument("--channels", type=int, default=96, help="channels per group")
    s.add_argument("--length", type=int, default=3136)
    s.add_argument("--state", type=int, default=1, help="N (d_state)")
    s.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    s.add_argument("--backends", default="triton,chunked")
    s.add_argument("--hbm-gbs", type=float, default=None, help="HBM bandwidth to use instead of measuring")
    s.add_argument("--warmup", type=int, default=25)
    s.add_argument("--rep", type=int, default=200)
    s.add_argument("--check", action="store_true", help="also print errors vs the float64 reference")
    s.add_argument("--check-batch", type=int, default=4)
    s.add_argument("--sweep", action="store_true", help="time the Triton kernels over block sizes")
    s.add_argument("--top", type=int, default=6)
    s.add_argument("--sweep-kernels", default="fwd,bwd", help="which kernels --sweep times")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("benchmark needs a CUDA device")
    if args.cmd == "scan":
        if args.check:
            check_scan(args)
        if args.sweep:
            sweep_scan(args)
        bench_scan(args)


if __name__ == "__main__":
    main()
