"""Mamba-ND family: parameter counts and the official layout, official logits (a micro config recorded with the
official code), mmengine-format files through timm, scan orders from the registry, non-square maps, timm API,
input errors."""
from __future__ import annotations

import os

import numpy as np
import pytest
import timm
import torch

from _helpers import create_meta, n_params, read_key_file, synthetic_official_state_dict

import vssm  # noqa: F401  (registers the models)
from vssm import CheckpointMismatchError, scans
from vssm.mamband import MambaND, checkpoint_filter_fn, scan_tokens, unscan_tokens

torch.set_num_threads(min(2, torch.get_num_threads()))

HERE = os.path.dirname(os.path.abspath(__file__))
# Made by the official Mamba-ND code in an mmpretrain classifier (random weights, pure-PyTorch stand-ins for
# mamba_ssm): a small config's official state dict, inputs and official logits. See the file's 'note'.
MICRO = os.path.join(HERE, "data", "mamband_official_micro.pt")

OFFICIAL = {"mamba2d_small": ("mamba2d_s", 24_505_192), "mamba2d_base": ("mamba2d_b", 94_425_832)}


@pytest.fixture(scope="module")
def micro_ref():
    return torch.load(MICRO, weights_only=True)


def micro_model(micro_ref, **kwargs) -> MambaND:
    model = MambaND(**dict(micro_ref["kwargs"], **kwargs)).eval()
    model.load_state_dict(checkpoint_filter_fn(micro_ref["state_dict"], model))
    return model


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_param_count_and_official_layout(name):
    key_file, count = OFFICIAL[name]
    model = create_meta(name)
    assert n_params(model) == count
    official = read_key_file(key_file)
    assert sum(int(torch.Size(s).numel()) for s in official.values()) == count
    mapped = checkpoint_filter_fn({k: torch.empty(s, device="meta") for k, s in official.items()}, model)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_registered():
    assert set(OFFICIAL) <= set(timm.list_models("mamba2d_*"))
    cfg = timm.get_pretrained_cfg("mamba2d_base.in1k")
    assert cfg.hf_hub_id == "jacklishufan/Mamba-ND" and cfg.hf_hub_filename == "in1k/mamba2d_b.pth"


def test_layer_orders_come_from_the_scan_registry():
    model = create_meta("mamba2d_small")
    assert [b.direction for b in model.layers[:5]] == ["h", "h_flip", "v", "v_flip", "h"]
    assert [i for i, b in enumerate(model.layers) if isinstance(b.downsample, vssm.layers.PatchMerging)] == [9]
    x = torch.arange(2 * 3 * 4 * 1.0).reshape(1, 2, 3, 4)  # (1, H=2, W=3, C=4) channels-last
    for direction in ("h", "h_flip", "v", "v_flip"):
        order = scans.build("window", directions=[direction]).index_map(2, 3)[0]
        tokens = scan_tokens(x, direction)
        torch.testing.assert_close(tokens[0], x.reshape(6, 4)[order])
        torch.testing.assert_close(unscan_tokens(tokens, direction, x), x)
    # official orders: column-major is 'n (h w) c -> n (w h) c', reversed = the whole sequence flipped
    assert scans.build("window", directions=["v_flip"]).index_map(2, 3)[0].tolist() == [5, 2, 4, 1, 3, 0]


@pytest.mark.parametrize("size", [32, 36])
def test_official_logits_micro(micro_ref, size):
    """32: the training grid; 36: the input padded to 40, the position embedding resampled to 5x5, an odd map
    padded in the patch merging."""
    model = micro_model(micro_ref)
    with torch.no_grad():
        out = model(micro_ref[f"x{size}"])
    torch.testing.assert_close(out, micro_ref[f"logits{size}"], atol=1e-5, rtol=1e-4)


def test_mmengine_file_through_timm(micro_ref, tmp_path):
    path = tmp_path / "mamba2d_micro.pth"
    torch.save({"meta": {"epoch": 300, "mmengine_version": "0.10.7", "seed": np.int64(77)},
                "state_dict": micro_ref["state_dict"], "message_hub": {"log_scalars": {"loss": np.ones(3)}}}, path)
    kw = dict(micro_ref["kwargs"])
    kw.pop("depth"), kw.pop("embed_dim")
    model = timm.create_model("mamba2d_small", pretrained=True, embed_dim=32, depth=6,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=10), **kw).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(micro_ref["x32"]), micro_ref["logits32"], atol=1e-5, rtol=1e-4)


def test_full_size_official_checkpoint_loads_strictly(tmp_path):
    sd = synthetic_official_state_dict("mamba2d_s")
    path = tmp_path / "mamba2d_s.pth"
    torch.save({"meta": {"epoch": 300}, "state_dict": sd}, path)
    model = timm.create_model("mamba2d_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(model.fc_norm.weight, sd["backbone.ln2.weight"])
    torch.testing.assert_close(model.head.weight, sd["head.fc.weight"])
    # patch merging: our (position-major) features are the official (channel-major) unfold features permuted
    ours = model.layers[9].downsample.reduction.weight
    theirs = sd["backbone.layers.9.down_sample_layer.reduction.weight"]
    c = 384
    torch.testing.assert_close(ours[:, 1 * c + 5], theirs[:, 5 * 4 + 2])  # our slot (1, 0) of channel 5: unfold 2*1+0
    torch.testing.assert_close(ours[:, 2 * c + 7], theirs[:, 7 * 4 + 1])  # our slot (0, 1) of channel 7: unfold 1


def test_mismatched_checkpoint_names_keys(micro_ref):
    model = MambaND(**micro_ref["kwargs"])
    sd = {k: v for k, v in micro_ref["state_dict"].items() if "layers.3.mixer.dt_proj" not in k}
    with pytest.raises(CheckpointMismatchError, match="layers.3.mixer.dt_proj.bias"):
        checkpoint_filter_fn(sd, model)


def test_non_square_maps(micro_ref):
    """The official code assumes square maps; here the orders follow the real (H, W): a transposed image scanned
    with the transposed orders (h <-> v) gives the same logits."""
    model = micro_model(micro_ref)
    swapped = micro_model(micro_ref, directions=("v", "v_flip", "h", "h_flip"))
    with torch.no_grad():
        pos = model.pos_embed.reshape(1, 4, 4, 32)
        swapped.pos_embed.copy_(pos.transpose(1, 2).reshape(1, 16, 32))
        swapped.patch_embed.proj.weight.copy_(model.patch_embed.proj.weight.transpose(2, 3))
        for a, b in zip(model.layers, swapped.layers):  # merging slots (1, 0) and (0, 1) trade places
            if isinstance(a.downsample, vssm.layers.PatchMerging):
                for p, q in ((a.downsample.reduction.weight, b.downsample.reduction.weight),
                             (a.downsample.norm.weight, b.downsample.norm.weight),
                             (a.downsample.norm.bias, b.downsample.norm.bias)):
                    q.copy_(torch.cat([p.chunk(4, dim=-1)[i] for i in (0, 2, 1, 3)], dim=-1))
        x = torch.randn(2, 3, 24, 48)
        out = model(x)
        assert out.shape == (2, 10)
        torch.testing.assert_close(swapped(x.transpose(2, 3)), out, atol=1e-5, rtol=1e-4)


def test_features_and_intermediates(micro_ref):
    model = micro_model(micro_ref)
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=[1, 2, 5])
        feats = model.forward_features(x)
    assert [t.shape for t in inter] == [(2, 32, 4, 6), (2, 32, 2, 3), (2, 32, 2, 3)]
    torch.testing.assert_close(final, feats)
    torch.testing.assert_close(model.norm(inter[-1].permute(0, 2, 3, 1)), feats)
    fmodel = timm.create_model("mamba2d_small", features_only=True, out_indices=(8, 9, 23))
    assert fmodel.feature_info.reduction() == [8, 16, 16] and fmodel.feature_info.channels() == [384] * 3


def test_train_step():
    model = MambaND(img_size=32, embed_dim=16, depth=4, downsample_layers=(1,), num_classes=5, drop_path_rate=0.1)
    model.set_grad_checkpointing(True)
    model(torch.randn(2, 3, 40, 32)).logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert {"pos_embed", "layers.0.mixer.A_log", "layers.3.mixer.D"} <= model.no_weight_decay()


def test_bad_inputs():
    model = MambaND(img_size=32, embed_dim=16, depth=2, downsample_layers=(1,), num_classes=5)
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="expects"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="downsample_layers"):
        MambaND(depth=4, downsample_layers=(9,))
    with pytest.raises(ValueError, match="direction"):
        MambaND(depth=2, downsample_layers=(), directions=("h", "diagonal"))
    with pytest.raises(ValueError, match="global_pool"):
        MambaND(depth=2, downsample_layers=(), global_pool="token")
