"""Vim family: parameter counts and the official layout, official logits (micro configs recorded with the official
code), official-format training files through timm, position-embedding resampling, timm API, input errors."""
from __future__ import annotations

import argparse
import os

import pytest
import timm
import torch

from _helpers import create_meta, n_params, read_key_file, synthetic_official_checkpoint

import vssm
from vssm import CheckpointMismatchError
from vssm.vim import Vim, checkpoint_filter_fn, resample_middle_pos_embed

torch.set_num_threads(min(2, torch.get_num_threads()))

HERE = os.path.dirname(os.path.abspath(__file__))
# Made by the official Vim code (random weights, pure-PyTorch stand-ins for mamba_ssm): two small configs'
# official state dicts, inputs and official logits. See the file's 'note'.
MICRO = os.path.join(HERE, "data", "vim_official_micro.pt")

OFFICIAL_PARAMS = {"vim_tiny": 7_148_008, "vim_small": 25_796_584, "vim_base": 97_598_440,
                   "vim_tiny_stride8": 7_250_344, "vim_small_stride8": 26_001_256}
TINY = dict(embed_dim=32, depth=2, num_classes=10)


@pytest.fixture(scope="module")
def micro_ref():
    return torch.load(MICRO, weights_only=True)


def _micro_model(cfg: dict) -> Vim:
    kw = cfg["kwargs"]
    return Vim(img_size=kw["img_size"], patch_size=kw["patch_size"], stride=kw["stride"], embed_dim=kw["embed_dim"],
               depth=kw["depth"], num_classes=kw["num_classes"]).eval()


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_param_count_and_official_layout(name):
    model = create_meta(name)
    assert n_params(model) == OFFICIAL_PARAMS[name]
    official = read_key_file(name)
    assert sum(int(torch.Size(s).numel()) for s in official.values()) == OFFICIAL_PARAMS[name]
    sd = {k: torch.empty(s, device="meta") for k, s in official.items()}
    mapped = checkpoint_filter_fn(sd, model)
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_registered():
    assert set(OFFICIAL_PARAMS) <= set(timm.list_models("vim_*"))
    cfg = timm.get_pretrained_cfg("vim_small_stride8.in1k")
    assert cfg.hf_hub_id == "hustvl/Vim-small-midclstok" and cfg.hf_hub_filename == "vim_s_midclstok_ft_81p6acc.pth"


@pytest.mark.parametrize("config", ["odd_grid", "stride8"])
def test_official_logits_micro(micro_ref, config):
    ref = micro_ref[config]
    model = _micro_model(ref)
    model.load_state_dict(checkpoint_filter_fn(ref["state_dict"], model))
    with torch.no_grad():
        out = model(ref["x"])
    torch.testing.assert_close(out, ref["logits"], atol=1e-5, rtol=1e-4)


def test_official_training_file_loads_model_weights(micro_ref, tmp_path):
    """The official file holds 'model', 'model_ema', 'args' (an argparse.Namespace): create_model(file=...) loads it
    with weights_only=True and takes 'model' (the published accuracy), not the EMA copy timm's loader would take."""
    ref = micro_ref["odd_grid"]
    ema = {k: v + 0.1 for k, v in ref["state_dict"].items()}
    path = tmp_path / "vim_official.pth"
    torch.save({"model": ref["state_dict"], "model_ema": ema, "epoch": 299,
                "args": argparse.Namespace(model="vim_micro", lr=5e-4)}, path)
    kw = ref["kwargs"]
    model = timm.create_model("vim_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10),
                              img_size=kw["img_size"], embed_dim=32, depth=2, num_classes=10).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ref["x"]), ref["logits"], atol=1e-5, rtol=1e-4)
    # another class count: the head is dropped (timm's adaptation), the trunk still loads
    model = timm.create_model("vim_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10),
                              img_size=kw["img_size"], embed_dim=32, depth=2, num_classes=3)
    torch.testing.assert_close(model.layers[1].mixer.A_b_log, ref["state_dict"]["layers.1.mixer.A_b_log"])


def test_full_size_official_checkpoint_loads_strictly(tmp_path):
    path = tmp_path / "vim_tiny.pth"
    ckpt = synthetic_official_checkpoint("vim_tiny")
    ckpt["args"] = argparse.Namespace(model="vim_tiny")
    torch.save(ckpt, path)
    model = timm.create_model("vim_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(model.norm.weight, ckpt["model"]["norm_f.weight"])
    torch.testing.assert_close(model.pos_embed, ckpt["model"]["pos_embed"])


class Unlisted:  # a class no allowlist names: a file pickling it must not load
    pass


def test_unsafe_file_refused(micro_ref, tmp_path):
    path = tmp_path / "vim_unsafe.pth"
    torch.save({"model": micro_ref["stride8"]["state_dict"], "extra": Unlisted()}, path)
    with pytest.raises(vssm.UnsafeCheckpointError, match="Unlisted"):
        timm.create_model("vim_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_mismatched_checkpoint_names_keys(micro_ref):
    ref = micro_ref["odd_grid"]
    model = _micro_model(ref)
    sd = dict(ref["state_dict"])
    del sd["layers.0.mixer.D_b"]
    with pytest.raises(CheckpointMismatchError, match="layers.0.mixer.D_b"):
        checkpoint_filter_fn(sd, model)


def test_pos_embed_resampling():
    torch.manual_seed(0)
    pos = torch.randn(1, 3 * 4 + 1, 8)  # 3x4 grid, class slot at 6
    same = resample_middle_pos_embed(pos, (3, 4), (3, 4))
    assert same is pos
    out = resample_middle_pos_embed(pos, (3, 4), (5, 6))
    assert out.shape == (1, 31, 8)
    torch.testing.assert_close(out[:, 15], pos[:, 6])  # class slot moves to the new middle (30 // 2)
    patches = torch.cat([pos[:, :6], pos[:, 7:]], 1).reshape(1, 3, 4, 8).permute(0, 3, 1, 2)
    expect = torch.nn.functional.interpolate(patches, size=(5, 6), mode="bicubic", antialias=True)
    expect = expect.permute(0, 2, 3, 1).reshape(1, 30, 8)
    torch.testing.assert_close(torch.cat([out[:, :15], out[:, 16:]], 1), expect)


def test_other_input_sizes_and_checkpoint_grid():
    small = Vim(img_size=48, **TINY).eval()  # 3x3 grid
    x = torch.randn(1, 3, 64, 96)  # 4x6 grid: the position embedding is resampled on the fly
    with torch.no_grad():
        out = small(x)
        # a model built for that size gets the resampled embedding from the filter: same logits
        big = Vim(img_size=(64, 96), **TINY).eval()
        big.load_state_dict(checkpoint_filter_fn(small.state_dict(), big))
        torch.testing.assert_close(big(x), out)
    torch.testing.assert_close(big.pos_embed, resample_middle_pos_embed(small.pos_embed, (3, 3), (4, 6)))


def test_features_and_intermediates():
    model = Vim(img_size=(48, 64), **TINY).eval()
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=[0, 1], norm=True)
        feats = model.forward_features(x)
    assert [t.shape for t in inter] == [(2, 32, 3, 4)] * 2
    torch.testing.assert_close(final, feats)
    patches = torch.cat([feats[:, :6], feats[:, 7:]], 1)  # 12 patches, class token at 6
    torch.testing.assert_close(inter[1], patches.reshape(2, 3, 4, 32).permute(0, 3, 1, 2))
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), feats[:, 6])

    fmodel = timm.create_model("vim_tiny", features_only=True, out_indices=(5, 11), img_size=(48, 64)).eval()
    assert fmodel.feature_info.channels() == [192, 192] and fmodel.feature_info.reduction() == [16, 16]
    maps = fmodel(x)
    assert [m.shape for m in maps] == [(2, 192, 3, 4)] * 2  # (pruning: tests/test_timm_contract.py)


def test_train_step_pools_and_checkpointing():
    model = Vim(img_size=32, global_pool="avg", drop_path_rate=0.1, **TINY)
    model.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 32, 32)
    model(x).logsumexp(-1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.reset_classifier(5, global_pool="token")
    assert model(x).shape == (2, 5)
    assert {"pos_embed", "cls_token", "layers.0.mixer.A_b_log", "layers.1.mixer.D"} <= model.no_weight_decay()


def test_bad_inputs():
    model = Vim(img_size=32, **TINY)
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 3, 8, 32))
    with pytest.raises(ValueError, match="global_pool"):
        Vim(global_pool="max", **TINY)
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model("vim_huge")
