"""LocalMamba family: parameter counts, directions (searched, user-supplied, invalid), window padding, the
official v/v_flip merge, CPU forward/backward, timm API, official checkpoint mapping, input errors."""
from __future__ import annotations

import copy

import pytest
import timm
import torch

from _helpers import load_tool, n_params, read_key_file, synthetic_official_checkpoint

from vssm import scans
import vssm
from vssm import CheckpointMismatchError
from vssm.localmamba import (LOCALMAMBA_DIRECTIONS, LocalSS2D, LocalVMamba, checkpoint_filter_fn,
                             resolve_directions, searched_directions)

torch.set_num_threads(min(2, torch.get_num_threads()))


# model -> (official name, parameter count measured from the official code, blocks)
OFFICIAL = {
    "local_vmamba_tiny": ("local_vssm_tiny", 25_527_160, 15),
    "local_vmamba_small": ("local_vssm_small", 49_748_536, 33),
}
# every direction once over a 4-block model (two blocks each use a window of 2 and of 7)
MIXED = [["h", "v_flip", "w2", "w7_flip"], ["h_flip", "v", "w2_flip", "w7"],
         ["v", "v_flip", "w7", "w2"], ["h", "h_flip", "v", "w2_flip"]]
SMALL_ARGS = dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), d_state=4, directions=MIXED)


_BUILT = {}


def built(name):
    """Release-size models are built once per test session (CPU; a few seconds each)."""
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = timm.create_model(name)
    return _BUILT[name]


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return timm.create_model("local_vmamba_tiny", **SMALL_ARGS).eval()


# ---- registry, sizes, directions ------------------------------------------------------------------------

def test_registered_and_cfg():
    names = timm.list_models("local_vmamba*")
    assert set(OFFICIAL) <= set(names)
    cfg = timm.models.get_pretrained_cfg("local_vmamba_small.in1k")
    assert cfg.tag == "in1k" and cfg.url.endswith("/v1.0.0/local_vssm_small.ckpt")
    assert cfg.input_size == (3, 224, 224) and cfg.crop_pct == 0.875 and cfg.interpolation == "bicubic"
    assert cfg.first_conv == "stem.proj" and cfg.classifier == "head.fc"
    assert timm.models.get_pretrained_cfg("local_vmamba_tiny.in1k").tag == "in1k"


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_param_count_and_state_dict_size(name):
    official_name, count, blocks = OFFICIAL[name]
    model = built(name)
    assert n_params(model) == count
    keys = read_key_file(official_name)
    assert len(model.state_dict()) == len(keys)
    official = {k: torch.empty(s, device="meta") for k, s in keys.items()}
    assert checkpoint_filter_fn({"model": official}, model).keys() == model.state_dict().keys()
    searched = searched_directions(name)
    assert len(searched) == blocks and all(len(b) == 4 for b in searched)
    assert [list(d) for d in model.directions] == searched
    mixers = [blk.mixer for stage in model.stages for blk in stage.blocks]
    assert [list(m.directions) for m in mixers] == searched and all(m.scan.K == 4 for m in mixers)


def test_searched_directions_data():
    assert searched_directions() == ["local_vmamba_small", "local_vmamba_tiny"]
    tiny = searched_directions("local_vmamba_tiny")
    assert tiny[0] == ["h", "h_flip", "w7", "w7_flip"] and tiny[-1] == ["h_flip", "v", "w7", "w7_flip"]
    small = searched_directions("local_vmamba_small")
    assert small[0] == ["h", "v", "v_flip", "w7_flip"] and small[-1] == ["h", "v", "w7", "w7_flip"]
    with pytest.raises(KeyError, match="available: local_vmamba_small, local_vmamba_tiny"):
        searched_directions("local_vmamba_huge")


def test_resolve_directions_forms_and_errors():
    assert resolve_directions(["h", "v"], (1, 2)) == [("h", "v")] * 3
    assert resolve_directions([["h"], ["v"], ["w2"]], (1, 2)) == [("h",), ("v",), ("w2",)]
    with pytest.raises(ValueError) as err:
        resolve_directions([["h"], ["v"], ["w3"]], (1, 2))
    msg = str(err.value)
    assert "'w3'" in msg and "block 2" in msg and "h, h_flip, v, v_flip, w2, w2_flip, w7, w7_flip" in msg
    with pytest.raises(ValueError, match="unknown LocalMamba scan direction 'diag'.*valid directions: h, h_flip"):
        resolve_directions(["h", "diag"], (2, 2))
    with pytest.raises(ValueError, match="lists 2 blocks but depths"):
        resolve_directions([["h"], ["v"]], (1, 2))
    with pytest.raises(ValueError, match="searched directions 'local_vmamba_tiny' lists 15 blocks"):
        resolve_directions("local_vmamba_tiny", (2, 2, 2, 2))
    with pytest.raises(ValueError, match="empty direction list"):
        resolve_directions([[], ["v"], ["h"]], (1, 2))
    with pytest.raises(TypeError):
        resolve_directions(None, (1,))


def test_unknown_direction_in_create_model():
    with pytest.raises(ValueError, match=r"unknown LocalMamba scan direction 'w5'.*valid directions: "
                                         r"h, h_flip, v, v_flip, w2, w2_flip, w7, w7_flip"):
        timm.create_model("local_vmamba_tiny", directions=["h", "v", "w5", "w7"])


# ---- scans: window order, padding, merge -----------------------------------------------------------------

def test_window_index_matches_official_order():
    P = scans.PAD
    # official local scan of a 2x3 map: 2x2 windows over the grid padded to 2x4, whole padded sequence flipped
    idx = scans.build("window", directions=["h", "v", "w2", "w2_flip"]).index_map(2, 3)
    assert idx.tolist() == [[0, 1, 2, 3, 4, 5, P, P], [0, 3, 1, 4, 2, 5, P, P],
                            [0, 1, 3, 4, 2, P, 5, P], [P, 5, P, 2, 4, 3, 1, 0]]
    # 7x7 windows on 8x8: 14x14 grid (196 tokens), row-major windows, row-major inside a window
    idx = scans.build("window", directions=["w7", "w7_flip", "h", "v_flip"]).index_map(8, 8)
    assert idx.shape == (4, 196)
    assert idx[0, :9].tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9] and idx[0, 49:52].tolist() == [7, P, P]
    assert torch.equal(idx[1], idx[0].flip(0)) and (idx[2, 64:] == P).all() and idx[3, 0] == 63
    with pytest.raises(ValueError, match="unknown direction.*'w3'.*valid: h, h_flip, v, v_flip, w2"):
        scans.build("window", directions=["h", "w3"])


def test_every_direction_puts_each_output_back_once():
    """scatter of the window pattern: every position holds the output of exactly one slot, the one scanned there."""
    for directions in (LOCALMAMBA_DIRECTIONS[:4], LOCALMAMBA_DIRECTIONS[4:]):
        pattern = LocalSS2D(8, directions=list(directions), d_state=2).scan
        for H, W in [(5, 5), (3, 7), (8, 9)]:
            positions = pattern.index_map(H, W).double()  # slot -> its position (PAD -1: dropped)
            maps = pattern.scatter(positions[None, :, None, :], (H, W))[0, :, 0].flatten(1)
            assert torch.equal(maps, torch.arange(H * W).double().expand(pattern.K, -1))


def test_official_v_merge_permutation():
    from vssm.localmamba import _official_v_order
    directions = ("v", "v_flip", "h", "w2")
    pattern = LocalSS2D(8, directions=list(directions), d_state=2).scan
    cpu = torch.device("cpu")
    assert torch.equal(_official_v_order(directions, 4, 4, cpu), torch.arange(16).expand(4, -1))
    slots = torch.arange(pattern.sequence_length(2, 3)).double().expand(4, -1)
    exact = pattern.scatter(slots[None, :, None, :], (2, 3))[0, :, 0].flatten(1)  # slot held at each position
    official = exact.gather(1, _official_v_order(directions, 2, 3, cpu))
    # official: the t-th column-major output (t = i*3 + j) goes to flat position j*2 + i
    assert official[0].tolist() == [0, 3, 1, 4, 2, 5] and official[1].tolist() == [5, 2, 4, 1, 3, 0]
    assert exact[0].tolist() == [0, 2, 4, 1, 3, 5]
    assert torch.equal(official[2:], exact[2:])


# ---- forward / backward / timm API -------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(64, 96), (40, 72)])  # 64x64: tests/test_timm_contract.py
def test_forward_backward(size):
    torch.manual_seed(0)
    model = timm.create_model("local_vmamba_tiny", num_classes=5, drop_path_rate=0.1, **SMALL_ARGS)
    x = torch.randn(2, 3, *size)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    mixer = model.stages[0].blocks[0].mixer
    for p in (mixer.A_logs, mixer.dt_projs_weight, mixer.x_proj_weight, mixer.direction_gate.global_reduce.weight,
              model.stem.proj.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_official_vs_exact_v_merge_only_differ_off_square(small):
    exact = timm.create_model("local_vmamba_tiny", official_v_merge=False, **SMALL_ARGS).eval()
    exact.load_state_dict(small.state_dict())
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        torch.testing.assert_close(small(x), exact(x), rtol=0, atol=0)
        x = torch.randn(1, 3, 64, 96)
        assert (small(x) - exact(x)).abs().max() > 1e-4


def test_user_directions_per_block():
    per_block = [["w7", "w7_flip", "w2", "w2_flip"]] * 8 + [["v"], ["h", "v"], ["h_flip", "v_flip", "w7"],
                                                             ["h"] * 4, ["w2"], ["v_flip"], ["h", "w7"]]
    model = timm.create_model("local_vmamba_tiny", dims=16, d_state=2, directions=per_block, num_classes=3).eval()
    mixers = [blk.mixer for stage in model.stages for blk in stage.blocks]
    assert [m.scan.K for m in mixers] == [len(d) for d in per_block]
    assert mixers[9].x_proj_weight.shape[0] == 2 and mixers[9].A_logs.shape[0] == 2 * 128
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_features_only():
    feats = timm.create_model("local_vmamba_tiny", features_only=True, **SMALL_ARGS).eval()
    assert feats.feature_info.channels() == [16, 32, 48, 64]
    assert feats.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        outs = feats(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 16, 16, 24), (1, 32, 8, 12), (1, 48, 4, 6), (1, 64, 2, 3)]


# ---- official checkpoints -------------------------------------------------------------------------------

def test_synthetic_official_checkpoint_loads_strictly(tmp_path):
    ckpt = synthetic_official_checkpoint("local_vssm_tiny")
    path = tmp_path / "local_vssm_tiny.pth"
    torch.save(ckpt, path)
    a = timm.create_model("local_vmamba_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    b = timm.create_model("local_vmamba_tiny", pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path))).eval()
    sd_a, sd_b = a.state_dict(), b.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    mapped = checkpoint_filter_fn(ckpt, a)
    assert len(mapped) == len(ckpt["model"]) == len(sd_a)
    assert sorted(float(v.flatten()[0]) for v in ckpt["model"].values()) == \
        sorted(float(v.flatten()[0]) for v in sd_a.values())
    official = ckpt["model"]
    torch.testing.assert_close(sd_a["stem.proj.weight"], official["patch_embed.0.weight"])
    torch.testing.assert_close(sd_a["stages.3.blocks.1.mixer.direction_gate.channel_select.weight"],
                               official["layers.3.blocks.1.op.multi_scan.attn.channel_select.weight"])
    torch.testing.assert_close(sd_a["stages.1.downsample.reduction.weight"],
                               official["layers.0.downsample.reduction.weight"])
    torch.testing.assert_close(sd_a["head.fc.bias"], official["classifier.head.bias"])
    # the {'state_dict': ...} wrapper of the converted release files and our own layout load too
    assert checkpoint_filter_fn({"state_dict": official}, a).keys() == sd_a.keys()
    assert checkpoint_filter_fn(sd_a, a).keys() == sd_a.keys()
    a.eval()
    with torch.no_grad():
        x = torch.randn(1, 3, 32, 32)
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


def test_checkpoint_errors_name_keys():
    model = built("local_vmamba_tiny")
    official = {k: torch.empty(s, device="meta") for k, s in read_key_file("local_vssm_tiny").items()}
    sd = dict(official)
    del sd["layers.2.blocks.3.op.multi_scan.attn.norm.bias"]
    sd["layers.1.blocks.0.op.multi_scan.weights"] = torch.zeros(8, 1, 1, 1)
    with pytest.raises(CheckpointMismatchError) as err:
        checkpoint_filter_fn({"model": sd}, model)
    msg = str(err.value)
    assert "missing keys (1): stages.2.blocks.3.mixer.direction_gate.norm.bias" in msg
    assert "unexpected keys (1): stages.1.blocks.0.mixer.multi_scan.weights" in msg
    # a VMamba checkpoint (MLP blocks, no direction gate) does not fit
    vm = {k: torch.empty(s, device="meta") for k, s in read_key_file("vanilla_vmamba_tiny").items()}
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        checkpoint_filter_fn(vm, model)


# ---- bad inputs ------------------------------------------------------------------------------------------

def test_bad_inputs(small):
    with pytest.raises(ValueError, match="3 input channels, got 1"):
        small(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="too small"):
        small(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match="image tensor"):
        small(torch.randn(3, 64, 64))
    with pytest.raises(RuntimeError, match="No pretrained weights"):  # tiny: not released
        timm.create_model("local_vmamba_tiny", pretrained=True, **SMALL_ARGS)
    gray = timm.create_model("local_vmamba_tiny", in_chans=1, **SMALL_ARGS)
    assert gray(torch.randn(1, 1, 32, 32)).shape == (1, 1000)
    assert isinstance(gray, LocalVMamba) and vssm.localmamba.LocalVMamba is LocalVMamba


# ---- FLOPs ----------------------------------------------------------------------------------------

def test_flops_tool_close_to_published():
    tool = load_tool("flops")
    result = tool.count_model(copy.deepcopy(built("local_vmamba_tiny")), (3, 224, 224))  # moved to meta
    assert result["params"] == 25_527_160
    # published 5.7G counts LayerNorms (fvcore) that flop_counter does not: ~0.09G for the tiny model
    assert abs(result["flops"] / 1e9 - 5.7) / 5.7 < 0.03 and result["scan_flops"] > 0
