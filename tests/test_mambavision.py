"""MambaVision family: parameter counts, official checkpoint mapping and logits, windows and attention helpers,
CPU forward/backward, timm API, input errors."""
from __future__ import annotations

import argparse
import math
import os
import re

import pytest
import timm
import torch
import torch.nn.functional as F

from _helpers import load_tool, n_params, read_key_file, synthetic_official_state_dict

import vssm  # noqa: F401
from vssm import CheckpointMismatchError
from vssm.layers import Attention, window_partition, window_reverse
from vssm.mambavision import MambaVision, MambaVisionMixer, checkpoint_filter_fn

torch.set_num_threads(min(2, torch.get_num_threads()))

HERE = os.path.dirname(os.path.abspath(__file__))
# Made by the official MambaVision code (random weights, sequential CPU scan): official-layout state dict of a
# small config, inputs, the official eval / train logits and stage outputs. See the file's 'note'.
MICRO = os.path.join(HERE, "data", "mambavision_official_micro.pt")

OFFICIAL = {  # ours: (official name, parameters of the official model, crop_pct of the official cfg)
    "mambavision_tiny": ("mamba_vision_T", 31_794_248, 1.0),
    "mambavision_tiny2": ("mamba_vision_T2", 35_104_008, 0.98),
    "mambavision_small": ("mamba_vision_S", 50_140_584, 0.93),
    "mambavision_base": ("mamba_vision_B", 97_685_288, 1.0),
    "mambavision_large": ("mamba_vision_L", 227_961_048, 1.0),
    "mambavision_large2": ("mamba_vision_L2", 241_554_824, 1.0),
}
MICRO_ARGS = dict(dim=8, in_dim=8, depths=(1, 1, 3, 2), window_size=(8, 8, 2, 2), mlp_ratio=2, num_heads=(1, 1, 2, 4),
                  layer_scale=0.5, layer_scale_conv=0.5)


def micro(**kwargs):
    torch.manual_seed(0)
    return MambaVision(**dict(MICRO_ARGS, num_classes=10, **kwargs))


@pytest.fixture(scope="module")
def micro_ref():
    return torch.load(MICRO, weights_only=True)


def official_file(path, sd):
    """The released layout: timm's CheckpointSaver dict with the weights under 'state_dict'."""
    torch.save({"epoch": 309, "arch": "mamba_vision_T", "state_dict": sd, "version": 2,
                "args": argparse.Namespace(model="mamba_vision_T")}, path)
    return str(path)


# ---- registry, parameter counts, cfgs -------------------------------------------------------------------

def test_registered_and_cfgs():
    assert set(OFFICIAL) <= set(timm.list_models("mambavision*"))
    assert not timm.list_models("mamba_vision*")  # the pip package's names stay free
    for name, (_, _, crop_pct) in OFFICIAL.items():
        cfg = timm.models.get_pretrained_cfg(f"{name}.in1k").to_dict()
        assert cfg["crop_pct"] == crop_pct and cfg["crop_mode"] == "center" and cfg["interpolation"] == "bicubic"
        assert cfg["hf_hub_id"].startswith("nvidia/MambaVision-") and cfg["hf_hub_filename"].endswith("_1k.pth.tar")
        assert cfg["license"] == "cc-by-nc-sa-4.0" and cfg["first_conv"] == "stem.conv.0"
        assert cfg["classifier"] == "head.fc"
    assert timm.models.get_pretrained_cfg("mambavision_base.in21k_ft_in1k").hf_hub_filename == \
        "mambavision_base_21k.pth.tar"


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_param_count_and_official_layout(name):
    official, count, _ = OFFICIAL[name]
    with torch.device("meta"):
        model = timm.create_model(name)
    assert n_params(model) == count
    keys = read_key_file(official)
    assert sum(math.prod(s) for k, s in keys.items() if not re.search(r"running_|num_batches", k)) == count
    # every official key maps onto the model, shapes included (meta tensors: shapes only)
    mapped = checkpoint_filter_fn({"state_dict": {k: torch.empty(s, device="meta") for k, s in keys.items()}}, model)
    assert set(mapped) == set(model.state_dict())


def test_mixer_attention_split():
    """Official rule: attention from block depth // 2 (odd depths: depth // 2 + 1) on, Mamba before."""
    with torch.device("meta"):
        model = timm.create_model("mambavision_tiny2")  # mixer stages of depths 11 and 4
    kinds = [[type(b.mixer).__name__ for b in model.stages[i].blocks] for i in (2, 3)]
    assert kinds[0] == ["MambaVisionMixer"] * 6 + ["Attention"] * 5
    assert kinds[1] == ["MambaVisionMixer"] * 2 + ["Attention"] * 2
    assert model.stages[2].blocks[0].mixer.d_state == 8 and model.stages[2].blocks[0].mixer.dt_rank == 20


# ---- weight-exactness against the official code ---------------------------------------------------------

def test_official_logits_micro(micro_ref):
    """Eval logits, every stage's output and train-mode logits (BatchNorm batch statistics) as the official code,
    at 48x48 (stage-3 windows padded) and 72x40 (non-square, both mixer stages padded)."""
    model = micro()
    model.load_state_dict(checkpoint_filter_fn(micro_ref["state_dict"], model), strict=True)
    model.eval()
    with torch.no_grad():
        for x, ref, feats in zip(micro_ref["inputs"], micro_ref["eval_logits"], micro_ref["eval_features"]):
            assert (model(x) - ref).abs().max() < 1e-5
            ours = model.forward_intermediates(x, intermediates_only=True)
            for a, b in zip(ours, feats):
                assert a.shape == b.shape and (a - b).abs().max() < 1e-5
        model.train()
        assert (model(micro_ref["inputs"][0]) - micro_ref["train_logits"]).abs().max() < 1e-5


def test_official_file_through_timm(micro_ref, tmp_path):
    """The released .pth.tar layout, {'model': sd}, a DDP-prefixed and a bare state dict load alike."""
    sd = micro_ref["state_dict"]
    files = [official_file(tmp_path / "release.pth.tar", sd)]
    for name, obj in (("model", {"model": sd}), ("ddp", {"state_dict": {f"module.{k}": v for k, v in sd.items()}}),
                      ("bare", sd)):
        torch.save(obj, tmp_path / name)
        files.append(str(tmp_path / name))
    x = micro_ref["inputs"][1]
    outs = []
    for f in files:
        m = timm.create_model("mambavision_tiny", pretrained=True, num_classes=10, **MICRO_ARGS,
                              pretrained_cfg_overlay=dict(file=f, num_classes=10)).eval()
        with torch.no_grad():
            outs.append(m(x))
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    assert (outs[0] - micro_ref["eval_logits"][1]).abs().max() < 1e-5


def test_synthetic_tiny_loads_strictly(tmp_path):
    sd = synthetic_official_state_dict("mamba_vision_T")
    with torch.device("meta"):
        model = timm.create_model("mambavision_tiny")
    model.load_state_dict(checkpoint_filter_fn({"state_dict": sd}, model), strict=True, assign=True)
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert torch.equal(model.stages[1].downsample.weight, sd["levels.0.downsample.reduction.0.weight"])
    assert torch.equal(model.stages[2].blocks[4].mixer.qkv.weight, sd["levels.2.blocks.4.mixer.qkv.weight"])
    assert torch.equal(model.head.fc.weight, sd["head.weight"])
    ours = checkpoint_filter_fn(model.state_dict(), model)  # our own layout passes through
    assert set(ours) == set(model.state_dict())


def test_pretrained_other_num_classes_and_in_chans(micro_ref, tmp_path):
    f = official_file(tmp_path / "official.pth.tar", micro_ref["state_dict"])
    m = timm.create_model("mambavision_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=f), num_classes=7,
                          **MICRO_ARGS)
    assert m.head.fc.out_features == 7
    assert torch.equal(m.stages[3].blocks[0].mixer.A_log, micro_ref["state_dict"]["levels.3.blocks.0.mixer.A_log"])
    m = timm.create_model("mambavision_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=f, num_classes=10),
                          num_classes=10, in_chans=1, **MICRO_ARGS)  # timm adapts the first stem conv
    assert m.stem.conv[0].weight.shape == (8, 1, 3, 3)
    assert torch.allclose(m.stem.conv[0].weight[:, 0], micro_ref["state_dict"]["patch_embed.conv_down.0.weight"].sum(1))


def test_checkpoint_errors_name_keys(micro_ref):
    model = micro()
    sd = dict(micro_ref["state_dict"])
    sd.pop("levels.2.blocks.1.mixer.conv1d_z.weight")
    sd["levels.3.blocks.0.mixer.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as err:
        checkpoint_filter_fn(sd, model)
    assert "stages.2.blocks.1.mixer.conv1d_z.weight" in str(err.value)
    assert "stages.3.blocks.0.mixer.extra" in str(err.value)
    sd = dict(micro_ref["state_dict"])
    sd["levels.1.downsample.reduction.0.weight"] = torch.zeros(32, 16, 1, 1)
    with pytest.raises(CheckpointMismatchError, match=r"stages\.2\.downsample\.weight"):
        checkpoint_filter_fn(sd, model)
    with pytest.raises(CheckpointMismatchError, match="gamma_1"):  # layer scales in the file, not in the model
        checkpoint_filter_fn(micro_ref["state_dict"], micro(layer_scale=None))


# ---- windows, attention, mixer ---------------------------------------------------------------------------

@pytest.mark.parametrize("size,window", [((6, 9), 3), ((5, 7), (2, 3)), ((4, 4), 4), ((3, 2), 5)])
def test_window_partition_reverse(size, window):
    H, W = size
    wh, ww = (window, window) if isinstance(window, int) else window
    x = torch.randn(2, H, W, 3)
    win = window_partition(x, window)
    nh, nw = -(-H // wh), -(-W // ww)
    assert win.shape == (2 * nh * nw, wh * ww, 3)
    padded = F.pad(x, (0, 0, 0, nw * ww - W, 0, nh * wh - H))
    for b in range(2):
        for i in range(nh):
            for j in range(nw):  # window (b, i, j) holds its tokens row-major
                ref = padded[b, i * wh:(i + 1) * wh, j * ww:(j + 1) * ww].reshape(-1, 3)
                assert torch.equal(win[(b * nh + i) * nw + j], ref)
    assert torch.equal(window_reverse(win, window, H, W), x)


def test_attention_matches_softmax_reference():
    torch.manual_seed(0)
    attn = Attention(12, num_heads=3, qkv_bias=True).eval()
    x = torch.randn(2, 5, 12)
    q, k, v = attn.qkv(x).reshape(2, 5, 3, 3, 4).permute(2, 0, 3, 1, 4)
    ref = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v
    ref = attn.proj(ref.transpose(1, 2).reshape(2, 5, 12))
    assert torch.allclose(attn(x), ref, atol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, num_heads=3)


def test_mixer_windows_are_independent_sequences():
    """The scan state starts at zero in every window: a window's output does not depend on the others, and a
    token does not depend on later tokens of its own window beyond the conv's reach (one step: kernel 3)."""
    torch.manual_seed(0)
    mixer = MambaVisionMixer(16, backend="reference").eval()
    x = torch.randn(3, 10, 16)
    with torch.no_grad():
        y = mixer(x)
        assert torch.allclose(mixer(x[1:2]), y[1:2], atol=1e-6)
        x2 = x.clone()
        x2[:, 6:] += 1.0
        y2 = mixer(x2)
    assert torch.allclose(y2[:, :5], y[:, :5], atol=1e-6) and not torch.allclose(y2[:, 5], y[:, 5])


def test_window_size_is_a_model_argument():
    a = micro().eval()
    b = micro(window_size=(8, 8, 4, 2)).eval()
    b.load_state_dict(a.state_dict())
    assert [s.window_size for s in b.stages] == [8, 8, 4, 2]
    with torch.no_grad():
        x = torch.randn(1, 3, 48, 48)  # stage-3 map 3x3: four padded 2x2 windows vs one padded 4x4 window
        assert not torch.allclose(a(x), b(x))


# ---- forward / backward, timm API -------------------------------------------------------------------------

def test_forward_backward_and_grad_checkpointing():
    model = micro(drop_path_rate=0.1).train()
    x = torch.randn(2, 3, 40, 56)
    out = model(x)
    assert out.shape == (2, 10)
    F.cross_entropy(out, torch.tensor([1, 2])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    a, b = micro(), micro()
    b.set_grad_checkpointing(True)
    for m in (a, b):
        torch.manual_seed(1)
        m(x).square().mean().backward()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5), n


def test_features_only_and_final_norm():
    model = timm.create_model("mambavision_tiny", features_only=True, **MICRO_ARGS)
    assert model.feature_info.channels() == [8, 16, 32, 64] and model.feature_info.reduction() == [4, 8, 16, 32]
    feats = model(torch.randn(1, 3, 72, 40))
    assert [tuple(f.shape) for f in feats] == [(1, 8, 18, 10), (1, 16, 9, 5), (1, 32, 5, 3), (1, 64, 3, 2)]
    net = micro().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # the final BatchNorm reads the last stage's tokens (the rest: tests/test_timm_contract.py)
        last = net.forward_intermediates(x, indices=1, output_fmt="NHWC", intermediates_only=True)
        torch.testing.assert_close(net.norm(last[0]), net.forward_features(x))


# ---- bad inputs ----------------------------------------------------------------------------------------

def test_bad_inputs():
    model = micro().eval()
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(batch, 3, H, W\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 3, 0, 32))
    with pytest.raises(ValueError, match="too small"):
        micro(min_input_size=32)(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match="window_size"):
        micro(window_size=(7, 7, 7))
    with pytest.raises(ValueError, match="at least 1"):
        micro(window_size=(8, 8, 0, 2))
    with pytest.raises(ValueError, match="num_heads"):
        micro(num_heads=(1, 2))
    with pytest.raises(ValueError, match="divisible"):
        micro(num_heads=(1, 1, 3, 4))
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model("mambavision_huge")
    with torch.no_grad():  # any size at least 1x1 works in eval mode, as the official code
        assert model(torch.randn(1, 3, 1, 1)).shape == (1, 10)


# ---- FLOPs ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,published", [("mambavision_tiny", 4.4), ("mambavision_small", 7.5)])
def test_flops_tool_against_published(name, published):
    """Our count is within 5% of the published one; without the attention products and the scan (ops a fvcore
    count skips) within 1.5%."""
    tool = load_tool("flops")
    with torch.device("meta"):
        model = timm.create_model(name)
    r = tool.count_model(model, (3, 224, 224))
    assert abs(r["flops"] / 1e9 - published) / published < 0.05 and r["scan_flops"] > 0
    rest = r["flops"] - r["per_op"]["bmm"] - r["scan_flops"]
    assert abs(rest / 1e9 - published) / published < 0.015
