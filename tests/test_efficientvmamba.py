"""EfficientVMamba family: parameter counts, atrous scan order, CPU forward/backward, timm API, official
checkpoint mapping, input errors."""
from __future__ import annotations

import re

import pytest
import timm
import torch

from _helpers import create_meta, load_tool, n_params, read_key_file, synthetic_official_checkpoint

from vssm import scans
import vssm  # noqa: F401  (registers the models)
from vssm import CheckpointMismatchError
from vssm.efficientvmamba import EfficientVMamba, checkpoint_filter_fn

torch.set_num_threads(min(2, torch.get_num_threads()))


# model -> (official key list or None, parameter count measured from the official code)
OFFICIAL = {
    "efficient_vmamba_tiny": ("efficient_vmamba_tiny", 6_493_660),
    "efficient_vmamba_small": (None, 11_273_688),  # dims 64: paper / training log (no key list shipped)
    "efficient_vmamba_small_d96": ("efficient_vmamba_small", 24_757_456),  # the repository yaml
    "efficient_vmamba_base": ("efficient_vmamba_base", 33_717_136),
}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return timm.create_model("efficient_vmamba_tiny").eval()


# ---- registry, sizes, scan ------------------------------------------------------------------------------

def test_registered_and_cfgs():
    names = timm.list_models("efficient_vmamba*")
    assert set(OFFICIAL) <= set(names)
    cfg = timm.models.get_pretrained_cfg("efficient_vmamba_small.in1k")
    assert cfg.tag == "in1k" and "EfficientVMamba-Small" in cfg.origin_url
    assert (cfg.hf_hub_id, cfg.hf_hub_filename) == ("TerryPei/EfficientVMamba-Small", "efficient_vmamba_small.ckpt")
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.crop_pct == 0.875 and cfg.interpolation == "bicubic"


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_param_counts(name):
    official_name, count = OFFICIAL[name]
    model = create_meta(name)
    assert n_params(model) == count
    if official_name:
        assert len(model.state_dict()) == len(read_key_file(official_name))
    cfg = model.pretrained_cfg
    assert cfg["classifier"] == "head.fc" and model.get_submodule(cfg["first_conv"]).in_channels == 3
    mixer = model.stages[0].blocks[0].mixer
    assert mixer.scan.name == "atrous" and mixer.scan.K == 4 and mixer.d_state == 16


def test_atrous_scan_matches_official_order():
    # official ES2D (step 2) on a 3x5 map padded to 4x6: (even,even) row-major, (odd,even) column-major,
    # (even,odd) row-major, (odd,odd) column-major; padding tokens (-1) stay in the sequences
    idx = scans.build("atrous", step=2).index_map(3, 5)
    P = -1
    expected = torch.tensor([
        [0, 2, 4, 10, 12, 14],
        [5, P, 7, P, 9, P],
        [1, 3, P, 11, 13, P],
        [6, P, 8, P, P, P],
    ])
    torch.testing.assert_close(idx, expected)


# ---- forward / backward on CPU ---------------------------------------------------------------------

def test_forward_backward():  # grad checkpointing and the timm contract: tests/test_timm_contract.py
    torch.manual_seed(0)
    model = timm.create_model("efficient_vmamba_tiny", num_classes=7, drop_path_rate=0.1,
                              depths=(1, 1, 1, 1), dims=16)
    out = model(torch.randn(2, 3, 72, 40))  # stage-1 map 9x5: atrous padding in forward and backward
    assert out.shape == (2, 7)
    out.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    block = model.stages[0].blocks[0]
    assert block.mixer.A_logs.grad.abs().sum() > 0 and block.conv_branch.conv_dw.weight.grad.abs().sum() > 0
    assert block.gate.fc1.weight.grad.abs().sum() > 0 and model.stages[3].blocks[0].se.fc1.weight.grad.abs().sum() > 0


def test_odd_sizes_pad_like_official(tiny):
    # 4x4 stem floors; patch merging and the atrous scan pad odd maps (stage maps 17x9 -> 9x5 -> 5x3 -> 3x2)
    with torch.no_grad():
        feats = tiny.forward_intermediates(torch.randn(1, 3, 70, 38), intermediates_only=True)
    assert [tuple(f.shape[2:]) for f in feats] == [(17, 9), (9, 5), (5, 3), (3, 2)]
    assert all(torch.isfinite(f).all() for f in feats)


# ---- timm API ---------------------------------------------------------------------------------------

def test_features_only():
    model = timm.create_model("efficient_vmamba_tiny", features_only=True).eval()
    assert model.feature_info.channels() == [48, 96, 192, 384]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 48, 16, 24), (1, 96, 8, 12), (1, 192, 4, 6), (1, 384, 2, 3)]


# ---- official checkpoints ---------------------------------------------------------------------------

def check_mapping(official, ours):
    """Every official tensor lands in exactly one of our entries, unchanged."""
    assert len(official) == len(ours)
    assert sorted(float(v.flatten()[0]) for v in official.values()) == \
        sorted(float(v.flatten()[0]) for v in ours.values())
    torch.testing.assert_close(ours["stem.proj.weight"], official["patch_embed.0.weight"])
    torch.testing.assert_close(ours["head.fc.weight"], official["classifier.head.weight"])
    torch.testing.assert_close(ours["stages.1.downsample.reduction.weight"],
                               official["layers.0.downsample.reduction.weight"])
    torch.testing.assert_close(ours["stages.0.blocks.1.gate.fc2.weight"],
                               official["layers.0.blocks.1.se.channel_select.weight"])
    torch.testing.assert_close(ours["stages.2.blocks.0.conv_pw.weight"], official["layers.2.1.conv_pw.0.weight"])
    torch.testing.assert_close(ours["stages.3.blocks.1.bn3.running_var"], official["layers.3.2.conv_pw2.1.running_var"])
    depth2 = max(int(m.group(1)) for k in official for m in [re.match(r"layers\.2\.(\d+)\.conv", k)] if m)
    torch.testing.assert_close(ours["stages.3.downsample.norm.weight"], official[f"layers.2.{depth2 + 2}.norm.weight"])


def test_synthetic_official_file_loads_strictly(tmp_path):
    """Through timm: pretrained=True + pretrained_cfg_overlay(file=...) with the official file layout."""
    ckpt = synthetic_official_checkpoint("efficient_vmamba_tiny")
    path = tmp_path / "efficient_vmamba_tiny.ckpt"
    torch.save(ckpt, path)
    a = timm.create_model("efficient_vmamba_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    b = timm.create_model("efficient_vmamba_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    sd_a, sd_b = a.state_dict(), b.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    check_mapping(ckpt["model"], sd_a)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ya = a(x)
        torch.testing.assert_close(ya, b(x), rtol=0, atol=0)
    assert torch.isfinite(ya).all()


@pytest.mark.parametrize("name", ["efficient_vmamba_small_d96", "efficient_vmamba_base"])
def test_synthetic_official_checkpoint_maps_strictly(name):
    ckpt = synthetic_official_checkpoint(OFFICIAL[name][0])
    loaded = []
    for _ in range(2):
        model = create_meta(name)
        result = model.load_state_dict(checkpoint_filter_fn(ckpt, model), strict=True, assign=True)
        assert not result.missing_keys and not result.unexpected_keys
        loaded.append(model.state_dict())
    assert all(torch.equal(loaded[0][k], loaded[1][k]) for k in loaded[0])
    check_mapping(ckpt["model"], loaded[0])


def test_checkpoint_wrappers_and_prefixes():
    model = create_meta("efficient_vmamba_tiny")
    sd = synthetic_official_checkpoint("efficient_vmamba_tiny")["model"]
    ref = checkpoint_filter_fn(sd, model)
    for wrapped in ({"state_dict": {"module.module." + k: v for k, v in sd.items()}},
                    {"model": sd, "ema_model": {"module." + k: v * 2 for k, v in sd.items()}, "epoch": 1},
                    {"ema_model": {"module." + k: v for k, v in sd.items()}}):
        out = checkpoint_filter_fn(wrapped, model)
        assert out.keys() == ref.keys() and all(torch.equal(out[k], ref[k]) for k in ref)
    ours = {k: v for k, v in ref.items()}
    assert checkpoint_filter_fn(ours, model).keys() == ref.keys()  # our own layout passes through


def test_checkpoint_adapts_classes_and_channels(tmp_path):
    path = tmp_path / "t.ckpt"
    torch.save(synthetic_official_checkpoint("efficient_vmamba_tiny"), path)
    model = timm.create_model("efficient_vmamba_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              num_classes=10, in_chans=1)
    assert model.head.fc.out_features == 10 and model.stem.proj.in_channels == 1
    feats = timm.create_model("efficient_vmamba_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              features_only=True, out_indices=(3,))
    assert feats.feature_info.channels() == [384]


def test_checkpoint_errors_name_keys():
    model = create_meta("efficient_vmamba_tiny")
    sd = dict(synthetic_official_checkpoint("efficient_vmamba_tiny")["model"])
    del sd["layers.1.blocks.1.op.A_logs"]
    sd["layers.2.5.conv_pw.0.weight"] = torch.zeros(768, 192, 1, 1)  # a 5th IR block in a depth-4 stage
    with pytest.raises(CheckpointMismatchError) as err:
        checkpoint_filter_fn({"model": sd}, model)
    msg = str(err.value)
    assert "missing keys (1): stages.1.blocks.1.mixer.A_logs" in msg
    assert "unexpected keys (1): layers.2.5.conv_pw.0.weight" in msg
    # the repository-yaml (dims 96) small checkpoint does not fit the paper's dims-64 small
    d96 = synthetic_official_checkpoint("efficient_vmamba_small")
    with pytest.raises(CheckpointMismatchError,
                       match=r"stem\.proj\.weight checkpoint \(96, 3, 4, 4\) vs model \(64, 3, 4, 4\)"):
        checkpoint_filter_fn(d96, create_meta("efficient_vmamba_small"))


# ---- bad inputs ---------------------------------------------------------------------------------------

def test_bad_inputs(tiny):
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        tiny(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="too small"):
        tiny(torch.randn(1, 3, 64, 16))
    with pytest.raises(ValueError, match="image tensor"):
        tiny(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="same length"):
        EfficientVMamba(depths=(2, 2, 4, 2), dims=(8, 16, 32))
    with pytest.raises(ValueError, match="block must be"):
        EfficientVMamba(depths=(1, 1), dims=8, stage_blocks=("evss", "attn"))
    with pytest.raises(RuntimeError, match="No pretrained weights"):  # the yaml's dims-96 small: not released
        timm.create_model("efficient_vmamba_small_d96", pretrained=True)


# ---- FLOPs ----------------------------------------------------------------------------------------

def test_flops_tool_matches_published():
    tool = load_tool("flops")
    for name, published in (("efficient_vmamba_tiny", 0.8), ("efficient_vmamba_small", 1.3)):
        result = tool.count_model(create_meta(name), (3, 224, 224))
        assert result["params"] == OFFICIAL[name][1]
        assert abs(result["flops"] / 1e9 - published) / published < 0.03
        assert result["scan_flops"] > 0
