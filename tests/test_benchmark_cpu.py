"""tools/benchmark.py's CPU model mode, run as a user runs it (a subprocess, so a hang fails the test instead of
stalling the suite): any timm names, the ConvNeXt references always timed, the table's ratios consistent with its
own columns, GFLOPs equal to tools/flops.py's, and the peak-memory child (forked after torch's thread pool ran)
coming back with a figure. VSSD (no scan backend option) runs beside the scan families."""
import os
import subprocess
import sys

import pytest
import timm
import torch

import vssm  # noqa: F401  (registers the models)
from _helpers import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def table():
    cmd = [sys.executable, os.path.join(ROOT, "tools", "benchmark.py"), "model", "--device", "cpu", "--models",
           "vmamba_nano,vssd_micro,resnet10t", "--img", "64", "--rounds", "1", "--calls", "2", "--train-batch", "2",
           "--train-img", "32", "--threads", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("model "))
    rows = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        f = line.split()
        rows[f[0]] = dict(gflops=float(f[1]), p50=float(f[2]), p90=float(f[3]), ms_gflop=float(f[5]),
                          x_ref=float(f[6]), train_ms=float(f[7]), train_ms_gflop=float(f[8]),
                          train_x_ref=float(f[9]), peak=float(f[10]), ref=f[11])
    return rows


def test_every_model_and_both_references_get_a_row(table):
    assert set(table) == {"vmamba_nano", "vssd_micro", "resnet10t", "convnext_tiny", "convnext_atto"}
    for name, row in table.items():
        assert row["p50"] > 0 and row["p90"] >= row["p50"] * 0.999 and row["train_ms"] > 0, name
        assert row["peak"] > 0, name  # the forked child measured and reported


def test_ratios_follow_the_table(table):
    for name, row in table.items():
        ref = table[row["ref"]]
        assert row["ref"] == ("convnext_tiny" if row["gflops"] > 2.0 else "convnext_atto")
        # GFLOPs are printed to 0.01: the relative rounding of a small count bounds the agreement
        assert row["ms_gflop"] == pytest.approx(row["p50"] / row["gflops"], rel=0.006 / row["gflops"] + 0.002)
        assert row["x_ref"] == pytest.approx(row["ms_gflop"] / ref["ms_gflop"], rel=0.05, abs=0.01)
        assert row["train_x_ref"] == pytest.approx(row["train_ms_gflop"] / ref["train_ms_gflop"], rel=0.05,
                                                   abs=0.01)
    assert table["convnext_atto"]["x_ref"] == 1.0


def test_gflops_are_the_flops_tools(table):
    flops = load_tool("flops")
    model = timm.create_model("vmamba_nano")
    expected = flops.count_model(model, (3, 64, 64), batch=1, device="cpu")["flops"] / 1e9
    assert table["vmamba_nano"]["gflops"] == pytest.approx(expected, abs=0.006)


def test_peak_memory_child_survives_a_used_thread_pool():
    """The child is forked after the parent ran parallel torch ops; it used to hang in its first parallel op."""
    benchmark = load_tool("benchmark")
    torch.set_num_threads(2)
    torch.randn(512, 512) @ torch.randn(512, 512)  # the parent's pool is up
    mib = benchmark._peak_rss_added_mib(lambda: torch.ones(64, 1024, 1024).sum())  # 256 MiB
    assert 200 < mib < 600
