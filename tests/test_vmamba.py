"""VMamba family: parameter counts, CPU forward/backward, timm API, official checkpoint mapping, input errors."""
from __future__ import annotations

import re

import pytest
import timm
import torch

from _helpers import create_meta, load_tool, n_params, read_key_file, synthetic_official_checkpoint

from vssm import scans
import vssm  # noqa: F401  (registers the models)
from vssm import CheckpointMismatchError
from vssm.vmamba import checkpoint_filter_fn

torch.set_num_threads(min(2, torch.get_num_threads()))


# model -> (official name, parameter count measured from the official code)
OFFICIAL = {
    "vmamba_tiny": ("vmamba_tiny_s1l8", 30_249_064),
    "vmamba_small": ("vmamba_small_s2l15", 50_147_752),
    "vmamba_base": ("vmamba_base_s2l15", 88_557_800),
    "vanilla_vmamba_tiny": ("vanilla_vmamba_tiny", 22_893_448),
    "vmamba_tiny_s2l5": ("vmamba_tiny_s2l5", 30_705_832),
}


@pytest.fixture(scope="module")
def nano():
    torch.manual_seed(0)
    return timm.create_model("vmamba_nano").eval()


# ---- registry and sizes ----------------------------------------------------------------------------

def test_registered():
    names = timm.list_models("vmamba*") + timm.list_models("vanilla_vmamba*")
    for name in OFFICIAL:
        assert name in names
    cfg = timm.models.get_pretrained_cfg("vmamba_tiny.in1k")
    assert cfg.tag == "in1k" and cfg.url.endswith("/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth")


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_param_count_and_state_dict_size(name):
    official_name, count = OFFICIAL[name]
    model = create_meta(name)
    assert n_params(model) == count
    keys = read_key_file(official_name)
    assert len(model.state_dict()) == len(keys)
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    assert cfg["classifier"] == "head.fc" and model.get_submodule(cfg["first_conv"]).in_channels == 3
    assert cfg["url"].startswith("https://github.com/MzeroMiko/VMamba/releases/download/") and cfg["custom_load"]


# ---- forward / backward on CPU ---------------------------------------------------------------------

# (64 px forward / backward / grad checkpointing of vmamba_nano: tests/test_timm_contract.py)
@pytest.mark.parametrize("name,size", [("vmamba_nano", 80), ("vanilla_vmamba_tiny", 64)])
def test_forward_backward(name, size):
    torch.manual_seed(0)
    small = dict(depths=(1, 1, 1, 1)) if name == "vanilla_vmamba_tiny" else {}  # v0 code path, kept cheap
    model = timm.create_model(name, num_classes=7, drop_path_rate=0.1, **small)
    x = torch.randn(1, 3, size, size)
    out = model(x)
    assert out.shape == (1, 7)
    out.square().sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    mixer = model.stages[0].blocks[0].mixer
    assert mixer.A_logs.grad.abs().sum() > 0 and mixer.x_proj_weight.grad.abs().sum() > 0


def test_odd_sizes(nano):
    with torch.no_grad():
        feats = nano.forward_features(torch.randn(1, 3, 65, 33))  # ceil at every stride-2 step (as official)
    assert feats.shape == (1, 3, 2, 192)
    v0 = timm.create_model("vanilla_vmamba_tiny", depths=(1, 1, 1, 1), dims=16).eval()
    with torch.no_grad():  # v0: floor in the 4x4 stem, zero-pad odd maps in patch merging (as official)
        assert v0.forward_features(torch.randn(1, 3, 70, 36)).shape == (1, 3, 2, 128)


# ---- timm API ---------------------------------------------------------------------------------------

def test_features_only_tiny():
    model = timm.create_model("vmamba_tiny", features_only=True).eval()
    assert model.feature_info.channels() == [96, 192, 384, 768]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 96, 16, 16), (1, 192, 8, 8), (1, 384, 4, 4), (1, 768, 2, 2)]


def test_no_weight_decay_names_the_ss2d_parameters(nano):
    # (no_weight_decay, the optimizer factory, forward_intermediates, features_only subsets, pruning and the
    # classifier: tests/test_timm_contract.py)
    nwd = nano.no_weight_decay()
    assert "stages.0.blocks.0.mixer.A_logs" in nwd and "stages.3.blocks.0.mixer.Ds" in nwd
    assert all(re.search(r"(A_logs|Ds|dt_projs_bias)$", n) for n in nwd)


def test_cross_scan_order_matches_official():
    # the official VMamba cross scan: row-major, column-major, then both reversed (per-k weights depend on it)
    idx = scans.build("cross").index_map(2, 3)
    rows = torch.tensor([0, 1, 2, 3, 4, 5])
    cols = torch.tensor([0, 3, 1, 4, 2, 5])
    torch.testing.assert_close(idx, torch.stack([rows, cols, rows.flip(0), cols.flip(0)]))


# ---- official checkpoints ---------------------------------------------------------------------------

def check_mapping(ckpt, model_sd):
    """Every official tensor lands in exactly one of our entries, unchanged."""
    official = ckpt["model"]
    assert len(official) == len(model_sd)
    assert sorted(float(v.flatten()[0]) for v in official.values()) == \
        sorted(float(v.flatten()[0]) for v in model_sd.values())
    torch.testing.assert_close(model_sd["norm.weight"], official["classifier.norm.weight"])
    torch.testing.assert_close(model_sd["head.fc.weight"], official["classifier.head.weight"])
    for key, value in official.items():
        m = re.match(r"layers\.(\d+)\.downsample\.", key)
        if m:  # official downsample closes stage i; ours opens stage i + 1
            prefix = f"stages.{int(m.group(1)) + 1}.downsample."
            assert any(torch.equal(value, v) for k, v in model_sd.items() if k.startswith(prefix)), key
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.op\.(\w+)$", key)
        if m:
            torch.testing.assert_close(model_sd[f"stages.{m.group(1)}.blocks.{m.group(2)}.mixer.{m.group(3)}"], value)


@pytest.mark.parametrize("name", ["vmamba_tiny", "vanilla_vmamba_tiny"])
def test_synthetic_official_checkpoint_file_loads_strictly(name, tmp_path):
    """Through timm: pretrained=True + pretrained_cfg_overlay(file=...) with the official file layout."""
    official_name, _ = OFFICIAL[name]
    ckpt = synthetic_official_checkpoint(official_name)
    path = tmp_path / f"{official_name}.pth"
    torch.save(ckpt, path)
    a = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    b = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    sd_a, sd_b = a.state_dict(), b.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    check_mapping(ckpt, sd_a)
    torch.testing.assert_close(sd_a[a.pretrained_cfg["first_conv"] + ".weight"], ckpt["model"]["patch_embed.0.weight"])
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["vmamba_small", "vmamba_base", "vmamba_tiny_s2l5"])
def test_synthetic_official_checkpoint_maps_strictly(name):
    """Big variants: same filter, strict load into meta-built models (no init compute, no file I/O)."""
    official_name, _ = OFFICIAL[name]
    ckpt = synthetic_official_checkpoint(official_name)
    loaded = []
    for _ in range(2):
        model = create_meta(name)
        result = model.load_state_dict(checkpoint_filter_fn(ckpt, model), strict=True, assign=True)
        assert not result.missing_keys and not result.unexpected_keys
        loaded.append(model.state_dict())
    assert loaded[0].keys() == loaded[1].keys() and all(torch.equal(loaded[0][k], loaded[1][k]) for k in loaded[0])
    check_mapping(ckpt, loaded[0])


def test_vanilla_small_official_layout_maps_strictly():
    """The v0 small release is the v0 tiny layout with 27 blocks in stage 3 (no key list of its own in
    shared/reference): tiny's official keys with the stage-3 blocks repeated load strictly, and the parameter count
    is the official code's (44,417,416, measured by building the official vanilla_vmamba_small; base 76,254,056)."""
    tiny = synthetic_official_checkpoint("vanilla_vmamba_tiny")["model"]
    sd = {k: v for k, v in tiny.items() if not k.startswith("layers.2.blocks.")}
    for j in range(27):
        for k, v in tiny.items():
            if k.startswith("layers.2.blocks.0."):
                sd[k.replace("layers.2.blocks.0.", f"layers.2.blocks.{j}.")] = v + j
    model = create_meta("vanilla_vmamba_small")
    assert n_params(model) == 44_417_416 and len(model.state_dict()) == len(sd) == 446
    result = model.load_state_dict(checkpoint_filter_fn({"model": sd}, model), strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    torch.testing.assert_close(model.stages[2].blocks[26].mixer.A_logs, sd["layers.2.blocks.26.op.A_logs"])
    assert n_params(create_meta("vanilla_vmamba_base")) == 76_254_056  # the official vanilla_vmamba_base's count


def test_checkpoint_adapts_classes_and_channels(tmp_path):
    ckpt = synthetic_official_checkpoint("vmamba_tiny_s1l8")
    path = tmp_path / "t.pth"
    torch.save(ckpt, path)
    model = timm.create_model("vmamba_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              num_classes=10, in_chans=1)
    assert model.head.fc.out_features == 10 and model.stem.conv1.in_channels == 1
    feats = timm.create_model("vmamba_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                              features_only=True, out_indices=(3,))
    assert feats.feature_info.channels() == [768]


def test_checkpoint_errors_name_keys():
    model = create_meta("vmamba_tiny")
    ckpt = synthetic_official_checkpoint("vmamba_tiny_s1l8")
    sd = dict(ckpt["model"])
    del sd["layers.2.blocks.7.op.A_logs"]
    sd["layers.2.blocks.8.op.Ds"] = torch.zeros(384)
    with pytest.raises(CheckpointMismatchError) as err:
        checkpoint_filter_fn({"model": sd}, model)
    msg = str(err.value)
    assert "missing keys (1): stages.2.blocks.7.mixer.A_logs" in msg
    assert "unexpected keys (1): stages.2.blocks.8.mixer.Ds" in msg
    sd = dict(ckpt["model"])
    sd["layers.0.blocks.0.op.Ds"] = torch.zeros(5)
    with pytest.raises(CheckpointMismatchError, match=r"stages\.0\.blocks\.0\.mixer\.Ds checkpoint \(5,\)"):
        checkpoint_filter_fn(sd, model)
    # a v2 checkpoint does not fit the v0 model
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        checkpoint_filter_fn(ckpt, create_meta("vanilla_vmamba_tiny"))
    # our own layout passes through
    ours = model.state_dict()
    assert checkpoint_filter_fn(ours, model).keys() == ours.keys()


# ---- bad inputs ---------------------------------------------------------------------------------------

def test_bad_inputs(nano):
    with pytest.raises(ValueError, match="3 input channels, got 4"):
        nano(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match="too small"):
        nano(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match="too small"):
        nano.forward_intermediates(torch.randn(1, 3, 64, 31))
    with pytest.raises(ValueError, match="image tensor"):
        nano(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="output_fmt"):
        nano.forward_intermediates(torch.randn(1, 3, 64, 64), output_fmt="NLC")
    feats = timm.create_model("vmamba_nano", features_only=True)
    with pytest.raises(ValueError, match="input channels"):
        feats(torch.randn(1, 1, 64, 64))
    gray = timm.create_model("vmamba_nano", in_chans=1)
    assert gray(torch.randn(1, 1, 32, 32)).shape == (1, 1000)
    with pytest.raises(ValueError, match="unknown stem"):
        timm.create_model("vmamba_nano", stem="hexagon")
    with pytest.raises(ValueError, match="unknown downsample"):
        timm.create_model("vmamba_nano", downsample="pool")
    with pytest.raises(RuntimeError, match="No pretrained weights"):  # nothing released
        timm.create_model("vmamba_nano", pretrained=True)


# ---- FLOPs ----------------------------------------------------------------------------------------

def test_flops_tool_matches_published():
    tool = load_tool("flops")
    result = tool.count_model(create_meta("vmamba_tiny"), (3, 224, 224))
    assert result["params"] == 30_249_064
    assert abs(result["flops"] / 1e9 - 4.9) / 4.9 < 0.03
    assert result["scan_flops"] > 0
