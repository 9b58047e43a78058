#!/usr/bin/env python
"""Benchmark the selective scan, its fused 2D form and whole models on the GPU.

    python tools/benchmark.py scan [--batch 128 --groups 4 --channels 96 --length 3136 --state 1 --dtype bf16]
                                   [--backends triton,chunked] [--check] [--sweep]
    python tools/benchmark.py scan2d [--pattern cross --batch 128 --channels 96 --size 56 --state 1 --dtype bf16]
    python tools/benchmark.py model [--models vmamba_tiny,...] [--batch 128 --img 224] [--backends triton,chunked]
                                    [--compile]
    python tools/benchmark.py compare [--official FAMILY=PATH ...] [--scan | --resolution-sweep | --stability N]
                                      (vssm against the official code and timm models: see tools/compare.py)
    python tools/benchmark.py ssd [--lengths 784,3136,12544 --heads 4 --head-dim 32 --state 64 --chunk 64]
                                  [--device cpu] [--backward]

For every backend: forward and forward+backward time (median of ``triton.testing.do_bench``), the bytes that
must move through device memory (every input read once, every output written once), the GB/s that time
implies, the HBM-roofline floor for those bytes and the fraction of it reached. The HBM bandwidth is measured
on the spot with a large device-to-device copy (bytes read + written), unless ``--hbm-gbs`` is given.

``--check`` prints max errors of each backend (forward and every gradient) against the float64 sequential
reference at a reduced batch. ``--sweep`` times the Triton kernels over a grid of block sizes.

``scan2d``: the fused gather -> scan -> scatter-add (``vssm.kernels.scan2d``) against the same work done unfused
(``pattern.flatten``, the backend's ``selective_scan``, ``pattern.merge``), with the bytes the fused op must
move: x, delta, B, C read once and the float32 output written once (backward: x, delta, B, C, dy read;
dx, ddelta, dB, dC written).

``ssd``: the SSD forms of ``vssm.kernels`` (non-causal, causal chunked, bidirectional) and the selective scan on
the same work (channels ``H*P``, the decay of each head repeated over its channels and the N states) over several
sequence lengths, median wall time of ``--rep`` calls (forward, or forward + backward with ``--backward``) and
its ratio to the first length; runs on the CPU too (``--device cpu``) to show how the chunked forms scale in L.

``model``: images/s for inference (AMP bf16, no grad) and for a training step (AMP bf16 forward + backward +
AdamW step) and peak memory of the training step, per model and scan backend; ``--compile`` adds
``torch.compile`` rows. Backends the model cannot run at this batch (out of memory) are reported as such.

``model --device cpu``: any timm model names (vssm models and e.g. ``convnext_tiny``, ``swin_tiny_patch4_window7_224``
in one call), float32, eval, ``--threads`` threads: batch-1 latency p50 / p90, img/s, GFLOPs (tools/flops.py),
ms per GFLOP and its ratio to ConvNeXt's (``convnext_tiny`` for models above 2 GFLOPs, ``convnext_atto`` below,
timed in the same run), the same for one training step (forward + backward + SGD step at ``--train-batch`` x
``--train-img``), and the peak resident memory an inference adds. The models are timed interleaved, ``--rounds``
rounds of ``--iters`` calls each, so that load from other processes hits all of them alike.
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


def time_passes(fn, inputs, grad_y, args):
    """Median ms of ``fn()`` without grad and of ``fn()`` + backward w.r.t. ``inputs``; None when out of memory."""
    import triton.testing

    def fwd():
        with torch.no_grad():
            return fn()

    def fwd_bwd():
        return torch.autograd.grad(fn(), list(inputs.values()), grad_y)

    try:
        t_f = triton.testing.do_bench(fwd, warmup=args.warmup, rep=args.rep, return_mode="median")
        t_fb = triton.testing.do_bench(fwd_bwd, warmup=args.warmup, rep=args.rep, return_mode="median")
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None
    return t_f, t_fb


def roofline_rows(t_f, t_fb, fwd_bytes, bwd_bytes, hbm):
    """(pass, ms, GB/s, floor ms, % of roofline) for forward, forward+backward and their difference."""
    rows = []
    for what, t, nbytes in (("forward", t_f, fwd_bytes), ("fwd+bwd", t_fb, fwd_bytes + bwd_bytes),
                            ("bwd (diff)", t_fb - t_f, bwd_bytes)):
        floor = nbytes / hbm / 1e6
        rows.append((what, t, nbytes / t / 1e6, floor, 100 * floor / t))
    return rows


def bench_scan(args):
    from vssm import kernels
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
        times = time_passes(lambda: kernels.selective_scan(**inputs, backend=backend), inputs, grad_y, args)
        if times is None:
            print(f"{backend}: out of memory")
            continue
        torch.cuda.reset_peak_memory_stats()
        torch.autograd.grad(kernels.selective_scan(**inputs, backend=backend), list(inputs.values()), grad_y)
        peak = torch.cuda.max_memory_allocated() / 2**30
        rows += [(backend, *row, peak) for row in roofline_rows(*times, fwd_bytes, bwd_bytes, hbm)]
    print(f"{'backend':<10} {'pass':<11} {'ms':>9} {'GB/s':>8} {'floor ms':>9} {'% roofline':>10} {'peak GiB':>9}")
    for backend, what, t, gbs, floor, pct, peak in rows:
        print(f"{backend:<10} {what:<11} {t:9.3f} {gbs:8.0f} {floor:9.3f} {pct:10.1f} {peak:9.2f}")
    return rows


def check_scan(args):
    """Max abs / relative error of each backend vs the float64 reference, every dtype, at a small batch."""
    from vssm import kernels
    from vssm.kernels.reference import selective_scan_reference
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
    """Time the 1D Triton kernels over block sizes."""
    from vssm.kernels import triton_scan as ts
    dtype = DTYPES[args.dtype]
    b, G, d, n, L = args.batch, args.groups, args.channels, args.state, args.length
    fwd_bytes, bwd_bytes = scan_bytes(b, G, d, n, L, dtype)
    vals = list(make_inputs(b, G, d, n, L, dtype, "cuda").values())
    grad_y = torch.randn_like(vals[0])
    sweep_configs(args, lambda: ts.forward(*vals, True), lambda: ts.backward(grad_y, *vals, True),
                  fwd_bytes, bwd_bytes, n)


def sweep_configs(args, fwd, bwd, fwd_bytes, bwd_bytes, n_state):
    """Time ``fwd`` / ``bwd`` (closures over Triton launches) for each (BLOCK_D, BLOCK_L, warps[, prefetch])
    under ``vssm.kernels.triton_scan.launch_config``; print the ``--top`` fastest of each with % of roofline."""
    import triton
    import triton.testing
    from vssm.kernels import triton_scan as ts
    hbm = args.hbm_gbs or measure_hbm_gbs()
    print(f"{'kernel':<8} {'BLOCK_D':>7} {'BLOCK_L':>7} {'warps':>5} {'pref':>4} {'ms':>8} {'% roofline':>10}")
    results = []
    np2 = triton.next_power_of_2(n_state)
    for bd, bl, w in itertools.product((1, 2, 4, 8, 16, 32), (16, 32, 64, 128, 256), (4, 8)):
        per_thread = bd * np2 * bl // (32 * w)
        if not 2 <= per_thread <= 16 or (np2 == 1 and bl < 32) or (np2 > 1 and bl > 128):
            continue
        try:
            if per_thread >= 4 and "fwd" in args.sweep_kernels:
                with ts.launch_config(BLOCK_D=bd, BLOCK_L=bl, num_warps=w):
                    t = triton.testing.do_bench(fwd, warmup=10, rep=40, return_mode="median")
                results.append(("fwd", bd, bl, w, "-", t, 100 * fwd_bytes / hbm / 1e6 / t))
            if per_thread <= 8 and "bwd" in args.sweep_kernels:
                for prefetch in (False, True):
                    with ts.launch_config(BLOCK_D=bd, BLOCK_L=bl, num_warps=w, PREFETCH=prefetch):
                        t = triton.testing.do_bench(bwd, warmup=10, rep=40, return_mode="median")
                    results.append(("bwd", bd, bl, w, "P" if prefetch else "-", t,
                                    100 * bwd_bytes / hbm / 1e6 / t))
        except Exception as e:  # noqa: BLE001 - a config the compiler rejects (registers, shared memory)
            print(f"config {bd} {bl} {w}: {type(e).__name__}: {str(e)[:100]}")
    for kind in ("fwd", "bwd"):
        best = sorted((r for r in results if r[0] == kind), key=lambda r: r[5])[: args.top]
        for r in best:
            print(f"{r[0]:<8} {r[1]:>7} {r[2]:>7} {r[3]:>5} {r[4]:>4} {r[5]:8.3f} {r[6]:10.1f}")


def bench_ssd(args):
    """Time the SSD forms and the selective scan on the same shapes over ``args.lengths``; returns the rows."""
    import time

    from vssm import kernels
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype]
    b, H, P, G, N = args.batch, args.heads, args.head_dim, args.groups, args.state
    print(f"ssd shapes: batch {b}, {H} heads x {P}, {G} group(s), N {N}, chunk {args.chunk}, {args.dtype}, {device}, "
          f"{'forward + backward' if args.backward else 'forward'}")

    def timed(fn, inputs):
        def call():
            y = fn()
            if args.backward:
                torch.autograd.grad(y, inputs, torch.ones_like(y))
            if device == "cuda":
                torch.cuda.synchronize()
        call()
        times = []
        for _ in range(args.rep):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        return 1e3 * sorted(times)[len(times) // 2]

    rows = []
    for L in (int(v) for v in args.lengths.split(",")):
        g = torch.Generator().manual_seed(0)
        t = dict(x=torch.randn(b, L, H, P, generator=g), dt=torch.randn(b, L, H, generator=g) - 2,
                 A=-torch.rand(H, generator=g), B=torch.randn(b, L, G, N, generator=g),
                 C=torch.randn(b, L, G, N, generator=g), D=torch.ones(H), dt_bias=torch.zeros(H))
        t = {k: v.to(device=device, dtype=dtype if v.dim() > 1 else torch.float32).requires_grad_(args.backward)
             for k, v in t.items()}
        sel = dict(u=t["x"].detach().reshape(b, L, H * P).transpose(1, 2),
                   delta=t["dt"].detach().repeat_interleave(P, dim=2).transpose(1, 2),
                   A=t["A"].detach().repeat_interleave(P)[:, None].expand(H * P, N).contiguous(),
                   B=t["B"].detach().permute(0, 2, 3, 1), C=t["C"].detach().permute(0, 2, 3, 1),
                   D=t["D"].detach().repeat_interleave(P), delta_bias=t["dt_bias"].detach().repeat_interleave(P))
        sel = {k: v.contiguous().requires_grad_(args.backward) for k, v in sel.items()}
        forms = {
            "noncausal": (lambda: kernels.ssd_noncausal(**t, dt_softplus=True), t),
            "causal": (lambda: kernels.ssd_causal(**t, dt_softplus=True, chunk_size=args.chunk), t),
            "bidirectional": (lambda: kernels.ssd_bidirectional(**t, dt_softplus=True, chunk_size=args.chunk), t),
            "selective_scan": (lambda: kernels.selective_scan(**sel, delta_softplus=True), sel),
        }
        for name, (fn, inputs) in forms.items():
            if name == "bidirectional" and (H % 2 or (G > 1 and G % 2)):
                continue
            rows.append((name, L, timed(fn, list(inputs.values()))))
    first = {name: ms for name, L, ms in rows if L == rows[0][1]}
    print(f"{'form':<15} {'L':>7} {'ms':>10} {'x first L':>10}")
    for name, L, ms in rows:
        print(f"{name:<15} {L:>7} {ms:10.2f} {ms / first[name]:10.2f}")
    return rows


def bench_scan2d(args):
    from vssm import kernels
    from vssm import scans
    dtype = DTYPES[args.dtype]
    pattern = scans.build(args.pattern)
    b, C, H, W, n = args.batch, args.channels, args.size, args.size, args.state
    K, L = pattern.K, pattern.sequence_length(H, W)
    ck = pattern.channels_per_sequence(C)
    hbm = args.hbm_gbs or measure_hbm_gbs()
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, device="cuda", generator=g) * scale

    R = args.dt_rank
    x = rnd(b, H, W, C).to(dtype).permute(0, 3, 1, 2)  # channels-last, as SS2D produces it
    # with --dt-rank R, delta is the low-rank (b, K, R, L) that dt_proj (K, C_k, R) maps to the step sizes
    delta = rnd(b, K, R, L, scale=0.5) if R else rnd(b, K * ck, L, scale=0.5)
    inputs = dict(x=x, delta=delta.to(dtype), A=-torch.rand(K * ck, n, device="cuda") - 0.01,
                  B=rnd(b, K, n, L).to(dtype), C=rnd(b, K, n, L).to(dtype), D=rnd(K * ck),
                  delta_bias=rnd(K * ck, scale=0.5))
    if R:
        inputs["dt_proj"] = rnd(K, ck, R, scale=R ** -0.5)
    for v in inputs.values():
        v.requires_grad_(True)
    es = x.element_size()
    io = (b * C * H * W + inputs["delta"].numel()) * es + 2 * b * K * n * L * es  # x, delta, B, C
    fwd_bytes = io + b * C * H * W * 4
    bwd_bytes = 2 * io + b * C * H * W * 4  # read inputs + dy (fp32), write their gradients
    grad_y = torch.randn(b, C, H, W, device="cuda")
    if args.sweep:
        from vssm.kernels import triton_scan as ts
        index = pattern.device_index(H, W, torch.device("cuda"), torch.int32)
        vals = [v.detach() for v in inputs.values()]
        saved = {}  # chunk length -> the forward's states (the backward keeps the forward's chunks)

        vals, proj = vals[:7], (vals[7] if R else None)

        def fwd():
            return ts.scan2d_forward(*vals, index, pattern.split_channels, True, True, proj)

        def bwd():
            chunk = ts.state_chunk(n, L, ck)
            if chunk not in saved:
                saved[chunk] = fwd()[1]
            return ts.scan2d_backward(grad_y, *vals, index, pattern.split_channels, True, saved[chunk], proj)

        sweep_configs(args, fwd, bwd, fwd_bytes, bwd_bytes, n)
    print(f"scan2d: pattern {args.pattern} (K {K}), batch {b}, {C} channels, {H}x{W} (L {L}), N {n}, "
          f"{f'dt rank {R} (projected in the op), ' if R else ''}{args.dtype}; HBM {hbm:.0f} GB/s")

    def fused(backend):
        return lambda: kernels.scan2d(**inputs, pattern=pattern, backend=backend)

    def unfused(backend):
        def run():
            xs = pattern.flatten(inputs["x"])
            delta = kernels.project_step_sizes(inputs["delta"], inputs["dt_proj"]) if R else inputs["delta"]
            ys = kernels.selective_scan(xs.reshape(b, K * ck, L), delta, inputs["A"], inputs["B"],
                                        inputs["C"], inputs["D"], inputs["delta_bias"], backend=backend)
            return pattern.merge(ys.view(xs.shape).float(), (H, W))
        return run

    rows = []
    for label, fn in [("fused triton", fused("triton")), ("unfused triton", unfused("triton"))] + [
            (f"unfused {bk}", unfused(bk)) for bk in args.backends.split(",") if bk and bk != "triton"]:
        times = time_passes(fn, inputs, grad_y, args)
        if times is None:
            print(f"{label}: out of memory")
            continue
        rows += [(label, *row) for row in roofline_rows(*times, fwd_bytes, bwd_bytes, hbm)]
    print(f"{'path':<16} {'pass':<11} {'ms':>9} {'GB/s*':>8} {'floor ms':>9} {'% roofline':>10}")
    for label, what, t, gbs, floor, pct in rows:
        print(f"{label:<16} {what:<11} {t:9.3f} {gbs:8.0f} {floor:9.3f} {pct:10.1f}")
    print("* bytes the fused op must move / time (the unfused paths move more)")
    return rows


def _time_cuda(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def bench_model(args):
    import vssm  # noqa: F401  (registers the models)
    args.models = args.models or GPU_MODELS
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    rows = []
    for name in args.models.split(","):
        # timm's own models (EfficientViM) have no scan backend: one row, labelled '-'
        for backend in (args.backends.split(",") if _is_vssm_model(name) else ["-"]):
            for compiled in ((False, True) if args.compile else (False,)):
                label = f"{backend}{' +compile' if compiled else ''}"
                torch.cuda.empty_cache()
                try:
                    row = _bench_one_model(name, backend, compiled, args)
                except torch.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    row = None
                rows.append((name, label, row))
                if row is None:
                    print(f"{name:<22} {label:<18} out of memory at batch {args.batch}", flush=True)
                else:
                    print(f"{name:<22} {label:<18} infer {row[0]:8.0f} img/s  train {row[1]:7.0f} img/s  "
                          f"peak {row[2]:6.2f} GiB", flush=True)
    print(f"\nbatch {args.batch}, {args.img}x{args.img}, AMP bf16, {torch.cuda.get_device_name()}, torch "
          f"{torch.__version__}")
    print(f"{'model':<22} {'scan backend':<18} {'infer img/s':>12} {'train img/s':>12} {'peak train GiB':>15}")
    for name, label, row in rows:
        if row is None:
            print(f"{name:<22} {label:<18} {'OOM':>12} {'OOM':>12} {'-':>15}")
        else:
            print(f"{name:<22} {label:<18} {row[0]:12.0f} {row[1]:12.0f} {row[2]:15.2f}")
    return rows


def _print_profile(fn, title, rows):
    """Torch-profiler table of the CUDA kernels of 3 calls of ``fn``, the ``rows`` costliest."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
    print(title)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70))


def _is_vssm_model(name):
    import timm
    import vssm  # noqa: F401  (registers the models)
    return timm.models.model_entrypoint(name).__module__.startswith("vssm.")


def _bench_one_model(name, backend, compiled, args):
    import timm
    kwargs = {} if backend == "-" else dict(scan_backend=backend)
    model = timm.create_model(name, **kwargs).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.img, args.img, device="cuda")
    target = torch.randint(0, 1000, (args.batch,), device="cuda")
    run = torch.compile(model) if compiled else model
    model.eval()

    def infer():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return run(x)

    t_inf = _time_cuda(infer, args.iters, args.warmup_iters)
    label = f"{name} {backend}{' +compile' if compiled else ''}"
    if args.profile:
        _print_profile(infer, f"{label}: CUDA time of 3 inference passes by kernel", args.profile)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = run(x)
            if isinstance(out, tuple):  # distillation heads in training mode
                out = out[0]
            loss = loss_fn(out.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    train_step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t_train = _time_cuda(train_step, args.iters, args.warmup_iters)
    peak = torch.cuda.max_memory_allocated() / 2**30
    if args.profile:
        _print_profile(train_step, f"{label}: CUDA time of 3 training steps by kernel", args.profile)
    return args.batch / t_inf * 1e3, args.batch / t_train * 1e3, peak


GPU_MODELS = ("vmamba_tiny,vmamba_small,vmamba_base,local_vmamba_tiny,efficient_vmamba_base,groupmamba_tiny,"
              "efficientvim_m4")
CPU_MODELS = ("vmamba_tiny,local_vmamba_tiny,efficient_vmamba_tiny,groupmamba_tiny,efficientvim_m4,convnext_tiny,"
              "convnext_atto")
CPU_REFERENCES = (("convnext_tiny", 2.0), ("convnext_atto", 0.0))  # (reference, for models above these GFLOPs)


def _peak_rss_added_mib(fn) -> float:
    """Peak resident memory that ``fn()`` adds, in MiB, measured in a forked child (ru_maxrss high-water mark
    against the child's resident size at its start) on one thread: the parent's OpenMP pool does not survive
    ``fork``, and a child that enters a parallel region hangs. NaN where fork is unavailable."""
    import resource
    if not hasattr(os, "fork"):
        return float("nan")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        try:
            with open("/proc/self/statm") as f:
                start_kib = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
            torch.set_num_threads(1)
            fn()
            added = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start_kib) / 1024
            os.write(write, f"{added}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return float(text) if text else float("nan")


def bench_models_cpu(args):
    """Interleaved CPU timing of timm models (see the module docstring); prints one row per model."""
    import time
    import timm
    import numpy as np
    import vssm  # noqa: F401  (registers the vssm models)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tools/flops.py

    torch.set_num_threads(args.threads)
    backends = [b for b in args.backends.split(",") if b and b != "triton"] or ["chunked"]  # triton: cuda only
    names, builds = [], {}  # row label -> (timm name, create_model kwargs)
    for name in (args.models or CPU_MODELS).split(",") + [ref for ref, _ in CPU_REFERENCES]:
        if name not in timm.list_models():
            raise SystemExit(f"benchmark: unknown model {name!r}")
        if not timm.models.model_entrypoint(name).__module__.startswith("vssm."):
            builds.setdefault(name, (name, {}))
            continue
        for backend in backends:
            builds.setdefault(name if len(backends) == 1 else f"{name}@{backend}", (name, dict(scan_backend=backend)))
    names = list(builds)
    models, steps, gflops, train_gflops, counted = {}, {}, {}, {}, {}
    x = torch.randn(1, 3, args.img, args.img)
    x_train = torch.randn(args.train_batch, 3, args.train_img, args.train_img)
    target = torch.randint(0, 1000, (args.train_batch,))
    for name in names:
        timm_name, kwargs = builds[name]
        torch.manual_seed(0)
        model = _create_cpu_model(timm_name, kwargs).eval()
        models[name] = model
        if timm_name not in counted:  # the count does not depend on the scan backend
            counted[timm_name] = tuple(_cpu_gflops(timm_name, size, batch) for size, batch in (
                (args.img, 1), (args.train_img, max(args.train_batch, 1))))
        gflops[name], train_gflops[name] = counted[timm_name]
        if not args.train_batch:
            continue
        train_model = _create_cpu_model(timm_name, kwargs).train()
        opt = torch.optim.SGD(train_model.parameters(), lr=1e-3)

        def step(m=train_model, opt=opt):
            out = m(x_train)
            out = out[0] if isinstance(out, tuple) else out  # distillation heads in training mode
            torch.nn.functional.cross_entropy(out, target).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        steps[name] = step

    def infer(name):
        with torch.no_grad():
            models[name](x)

    latency = {n: [] for n in names}
    train = {n: [] for n in names}
    for name in names:  # warm-up
        infer(name)
        if name in steps:
            steps[name]()
    for r in range(args.rounds):
        for name in names:
            for _ in range(args.calls):
                t = time.perf_counter()
                infer(name)
                latency[name].append(1e3 * (time.perf_counter() - t))
            if name in steps:
                t = time.perf_counter()
                steps[name]()
                train[name].append(1e3 * (time.perf_counter() - t))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {np.median(latency[n][-args.calls:]):.0f}"
                                                          for n in names) + " ms", flush=True)
    peak = {n: _peak_rss_added_mib(lambda n=n: infer(n)) for n in names}

    def reference(name):
        return next(ref for ref, above in CPU_REFERENCES if gflops[name] > above)

    p50 = {n: float(np.median(latency[n])) for n in names}
    t50 = {n: float(np.median(train[n])) if train[n] else float("nan") for n in names}
    cpu = _cpu_model_name()
    print(f"\nCPU: {cpu}, {args.threads} threads, torch {torch.__version__}; inference batch 1 {args.img}x{args.img} "
          f"float32 eval ({args.rounds} rounds x {args.calls} calls, interleaved); training step batch "
          f"{args.train_batch} {args.train_img}x{args.train_img} (forward + backward + SGD, {args.rounds} steps)")
    head = (f"{'model':<24} {'GFLOPs':>7} {'p50 ms':>8} {'p90 ms':>8} {'img/s':>7} {'ms/GFLOP':>9} {'x ref':>6} "
            f"{'train ms':>9} {'ms/GFLOP':>9} {'x ref':>6} {'peak MiB':>9}  reference")
    print(head)
    for n in names:
        ref = reference(n)
        ms_gf, ref_gf = p50[n] / gflops[n], p50[ref] / gflops[ref]
        tr_gf, tref_gf = t50[n] / train_gflops[n], t50[ref] / train_gflops[ref]
        print(f"{n:<24} {gflops[n]:7.2f} {p50[n]:8.1f} {np.percentile(latency[n], 90):8.1f} "
              f"{1e3 / np.mean(latency[n]):7.2f} {ms_gf:9.1f} {ms_gf / ref_gf:6.2f} {t50[n]:9.0f} {tr_gf:9.1f} "
              f"{tr_gf / tref_gf:6.2f} {peak[n]:9.0f}  {ref}")
    return dict(p50=p50, train=t50, gflops=gflops, train_gflops=train_gflops, peak=peak)


def _create_cpu_model(name: str, kwargs: dict):
    """``timm.create_model``; a vssm model without a ``scan_backend`` option (VSSD runs the SSD operator) is built
    without it."""
    import timm
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as err:
        if "scan_backend" not in kwargs or "scan_backend" not in str(err):
            raise
        return timm.create_model(name, **{k: v for k, v in kwargs.items() if k != "scan_backend"})


def _cpu_gflops(name: str, size: int, batch: int) -> float:
    """Forward GFLOPs (tools/flops.py's convention), counted on the meta device (on the CPU where it cannot run)."""
    import timm
    from flops import count_model
    try:
        with torch.device("meta"):
            model = timm.create_model(name)
        return count_model(model, (3, size, size), batch=batch, device="meta")["flops"] / 1e9
    except (NotImplementedError, RuntimeError):
        return count_model(timm.create_model(name), (3, size, size), batch=batch, device="cpu")["flops"] / 1e9


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown CPU"



def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


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
    s2 = sub.add_parser("scan2d", help="fused scan over a 2D map vs the unfused composition")
    s2.add_argument("--pattern", default="cross")
    s2.add_argument("--batch", type=int, default=128)
    s2.add_argument("--channels", type=int, default=96)
    s2.add_argument("--size", type=int, default=56, help="H = W of the map")
    s2.add_argument("--state", type=int, default=1)
    s2.add_argument("--dt-rank", type=_non_negative, default=0,
                    help="R > 0: delta is low-rank (batch, K, R, L), projected inside the op (dt_proj)")
    s2.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    s2.add_argument("--backends", default="chunked", help="PyTorch backends for unfused baseline rows")
    s2.add_argument("--hbm-gbs", type=float, default=None)
    s2.add_argument("--warmup", type=int, default=25)
    s2.add_argument("--rep", type=int, default=100)
    s2.add_argument("--sweep", action="store_true", help="time the fused kernels over block sizes")
    s2.add_argument("--top", type=int, default=6)
    s2.add_argument("--sweep-kernels", default="fwd,bwd")
    m = sub.add_parser("model", help="whole-model inference / training throughput and memory")
    m.add_argument("--models", default=None, help=f"comma-separated timm names (cuda default: {GPU_MODELS}; "
                                                  f"cpu default: {CPU_MODELS})")
    m.add_argument("--backends", default="triton,chunked", help="scan backends (chunked = pure-PyTorch baseline)")
    m.add_argument("--batch", type=int, default=128)
    m.add_argument("--img", type=int, default=224)
    m.add_argument("--iters", type=int, default=20)
    m.add_argument("--warmup-iters", type=int, default=5)
    m.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    m.add_argument("--profile", type=int, default=0, metavar="K",
                   help="also print the K costliest CUDA kernels of 3 inference passes and of 3 training steps")
    m.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    m.add_argument("--threads", type=int, default=2, help="cpu: torch threads")
    m.add_argument("--rounds", type=int, default=5, help="cpu: interleaved rounds over the models")
    m.add_argument("--calls", type=int, default=3, help="cpu: timed calls per model and round")
    m.add_argument("--train-img", type=int, default=64, help="cpu: image size of the timed training step")
    m.add_argument("--train-batch", type=int, default=8, help="cpu: batch of the timed training step (0: none)")
    compare = _compare_tool()
    compare.add_arguments(sub.add_parser("compare", help="vssm, the official code and timm models side by side "
                                                         "(tools/compare.py)"))
    d = sub.add_parser("ssd", help="SSD forms vs the selective scan over sequence lengths (CPU or GPU)")
    d.add_argument("--lengths", default="784,3136,12544")
    d.add_argument("--batch", type=int, default=1)
    d.add_argument("--heads", type=int, default=4)
    d.add_argument("--head-dim", type=int, default=32)
    d.add_argument("--groups", type=int, default=1)
    d.add_argument("--state", type=int, default=64)
    d.add_argument("--chunk", type=int, default=64)
    d.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    d.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    d.add_argument("--backward", action="store_true", help="time forward + backward")
    d.add_argument("--rep", type=int, default=5)
    args = p.parse_args(argv)
    if args.cmd == "compare":
        return compare.run(args)
    if args.cmd == "model" and args.device == "cpu":
        bench_models_cpu(args)
        return 0
    if args.cmd == "ssd":
        return bench_ssd(args)
    if not torch.cuda.is_available():
        raise SystemExit("benchmark needs a CUDA device")
    if args.cmd == "scan2d":
        bench_scan2d(args)
    elif args.cmd == "model":
        bench_model(args)
    elif args.cmd == "scan":
        if args.check:
            check_scan(args)
        if args.sweep:
            sweep_scan(args)
        bench_scan(args)


def _compare_tool():
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import compare
    return compare


if __name__ == "__main__":
    sys.exit(main())
