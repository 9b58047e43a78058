"""tools/flops.py: the fused ``vssm::scan2d`` op (the CUDA path) counts the same as the PyTorch path; H W sizes."""
from __future__ import annotations

import sys

import pytest
import timm

from _helpers import load_tool

import vssm  # noqa: F401

SCAN2D = sys.modules["vssm.kernels.scan2d"]


@pytest.fixture(scope="module")
def tool():
    return load_tool("flops")


@pytest.mark.parametrize("name,kwargs", [
    ("vmamba_nano", {}),  # cross scan, step sizes projected inside the op
    ("local_vmamba_tiny", dict(depths=(1, 1, 1, 1), dims=16, directions=["h", "v_flip", "w2", "w7"])),  # per sequence
    ("groupmamba_tiny", dict(stem_hidden_dim=8, dims=(16, 16, 32, 32), depths=(1, 1, 1, 1))),  # channel groups
])
def test_fused_op_path_counts_like_pytorch_path(tool, monkeypatch, name, kwargs):
    """On the meta device the PyTorch path runs (flatten, vssm::selective_scan, merge); with the backend resolved
    to 'triton', as on CUDA, the model runs the fused vssm::scan2d op (its fake kernel): same totals."""
    model = timm.create_model(name, **kwargs)
    ref = tool.count_model(model, (3, 64, 96))
    assert "vssm.selective_scan" in ref["per_op"] and "vssm.scan2d" not in ref["per_op"]
    monkeypatch.setattr(SCAN2D, "resolve_backend", lambda backend, device, dtype: "triton")
    fused = tool.count_model(model, (3, 64, 96))
    assert "vssm.scan2d" in fused["per_op"] and "vssm.selective_scan" not in fused["per_op"]
    assert fused["scan_flops"] == pytest.approx(ref["scan_flops"], rel=1e-12) and ref["scan_flops"] > 0
    assert fused["flops"] == pytest.approx(ref["flops"], rel=1e-12)


def test_img_size_h_w(tool, capsys):
    assert tool.main(["vmamba_nano", "--img-size", "64", "96", "--img-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "1x3x64x96" in out and "1x3x64x64" in out
    model = timm.create_model("vmamba_nano")
    assert tool.count_model(model, (3, 64, 96))["flops"] == pytest.approx(
        1.5 * tool.count_model(model, (3, 64, 64))["flops"], rel=0.05)  # ~ the number of tokens
    with pytest.raises(SystemExit):
        tool.main(["vmamba_nano", "--img-size", "64", "96", "128"])
    assert "takes H or H W" in capsys.readouterr().err
