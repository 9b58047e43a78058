"""pretrained=True as for any timm model: each released model's cfg names the official file, timm finds it where
torch.hub / huggingface_hub cache downloads, and the family's loader reads it with weights_only=True.

Nothing here touches the network: an official-format file (random tensors in the official layout, wrapped as the
official training code saves it, with its pickled config) is placed in the cache first, downloads are made to
fail, and the test checks that ``pretrained=True`` loaded exactly that file. Official-layout keys come from
``shared/reference``; the large models are built with one block per stage (``depths=(1, 1, 1, 1)``) and their key
lists cut to the same blocks, which changes no key name and no tensor shape.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
import torch.hub

from _helpers import synthetic_official_state_dict

import vssm  # noqa: F401

torch.set_num_threads(min(2, torch.get_num_threads()))

# released model -> (official file name, official key list, kwargs that shrink the model; its key list is cut to
# the same blocks)
URL_RELEASES = {
    "vmamba_tiny.in1k": ("vssm1_tiny_0230s_ckpt_epoch_264.pth", "vmamba_tiny_s1l8", dict(depths=(1, 1, 1, 1))),
    "vmamba_tiny_s2l5.in1k": ("vssm_tiny_0230_ckpt_epoch_262.pth", "vmamba_tiny_s2l5", dict(depths=(1, 1, 1, 1))),
    "vmamba_small.in1k": ("vssm_small_0229_ckpt_epoch_222.pth", "vmamba_small_s2l15", dict(depths=(1, 1, 1, 1))),
    "vmamba_base.in1k": ("vssm_base_0229_ckpt_epoch_237.pth", "vmamba_base_s2l15", dict(depths=(1, 1, 1, 1))),
    "vanilla_vmamba_tiny.in1k": ("vssmtiny_dp01_ckpt_epoch_292.pth", "vanilla_vmamba_tiny", dict(depths=(1, 1, 1, 1))),
    # v0 small: tiny's widths (96); one block per stage makes both layouts the same
    "vanilla_vmamba_small.in1k": ("vssmsmall_dp03_ckpt_epoch_238.pth", "vanilla_vmamba_tiny",
                                  dict(depths=(1, 1, 1, 1))),
    "local_vmamba_small.in1k": ("local_vssm_small.ckpt", "local_vssm_small",
                                dict(depths=(1, 1, 1, 1), directions=[["h", "v", "w2", "w7"]] * 4)),
}
HF_RELEASES = {
    "efficient_vmamba_tiny.in1k": ("TerryPei/EfficientVMamba-Tiny", "efficient_vmamba_tiny.ckpt",
                                   "efficient_vmamba_tiny"),
    "efficient_vmamba_small.in1k": ("TerryPei/EfficientVMamba-Small", "efficient_vmamba_small.ckpt",
                                    "efficient_vmamba_small"),
    "efficient_vmamba_base.in1k": ("TerryPei/EfficientVMamba-Base", "efficient_vmamba_base.ckpt",
                                   "efficient_vmamba_base"),
}


def official_file(key_list: str, depths=None, seed: int = 0) -> dict:
    """A checkpoint as the official training code saves it: ``{'model': sd, 'config': ..., 'epoch': ...}`` (the
    config pickled as a Namespace, which a weights_only load must accept), blocks beyond ``depths`` cut."""
    sd = synthetic_official_state_dict(key_list, seed)
    if depths is not None:
        def keep(k):
            m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", k)
            return m is None or int(m.group(2)) < depths[int(m.group(1))]
        sd = {k: v for k, v in sd.items() if keep(k)}
    return {"model": sd, "config": argparse.Namespace(model=key_list), "epoch": 299}


def test_released_models_are_listed_with_their_files():
    released = set(timm.list_pretrained("*vmamba*"))
    assert set(URL_RELEASES) | set(HF_RELEASES) <= released
    for tag, (filename, *_rest) in URL_RELEASES.items():
        cfg = timm.models.get_pretrained_cfg(tag)
        assert cfg.url.endswith("/" + filename) and cfg.url.startswith("https://github.com/") and cfg.custom_load
    for tag, (hub_id, filename, _keys) in HF_RELEASES.items():
        cfg = timm.models.get_pretrained_cfg(tag)
        assert (cfg.hf_hub_id, cfg.hf_hub_filename, cfg.custom_load) == (hub_id, filename, "hf")
    for name in ("local_vmamba_tiny", "vmamba_nano", "efficient_vmamba_small_d96"):  # nothing released
        assert not timm.list_pretrained(name)


@pytest.fixture
def torch_hub_cache(tmp_path, monkeypatch):
    """An empty torch.hub cache under TORCH_HOME; any download attempt fails the test."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cache.mkdir(parents=True)
    return cache


@pytest.mark.parametrize("tag", list(URL_RELEASES))
def test_pretrained_true_loads_the_cached_release_file(tag, torch_hub_cache):
    filename, key_list, kwargs = URL_RELEASES[tag]
    ckpt = official_file(key_list, kwargs.get("depths"))
    torch.save(ckpt, torch_hub_cache / filename)
    name = tag.split(".")[0]
    model = timm.create_model(tag, pretrained=True, **kwargs)
    expected = vssm.unwrap_state_dict(ckpt)
    mapped = sys.modules[type(model).__module__].checkpoint_filter_fn(expected, model)
    assert len(mapped) == len(model.state_dict()) == len(expected)
    for k, v in model.state_dict().items():
        assert torch.equal(v, mapped[k]), k
    # num_classes / in_chans adapt as for any timm model
    other = timm.create_model(name, pretrained=True, num_classes=5, in_chans=1, **kwargs)
    assert other.get_classifier().out_features == 5
    first = model.pretrained_cfg["first_conv"]
    assert torch.allclose(other.get_submodule(first).weight[:, 0], model.get_submodule(first).weight.sum(1))


class Payload:
    """Stands for any pickled object beyond plain data (unpickling could run its code)."""


def test_pretrained_true_refuses_unsafe_cached_file(torch_hub_cache):
    filename, key_list, kwargs = URL_RELEASES["vmamba_tiny.in1k"]
    torch.save(dict(official_file(key_list, kwargs["depths"]), extra=Payload()), torch_hub_cache / filename)
    with pytest.raises(vssm.UnsafeCheckpointError, match="Payload"):
        timm.create_model("vmamba_tiny", pretrained=True, **kwargs)


HF_SCRIPT = textwrap.dedent("""
    import sys, torch, timm, vssm
    tag = sys.argv[1]
    model = timm.create_model(tag, pretrained=True)
    ckpt = vssm.load_checkpoint_file(sys.argv[2])
    mapped = sys.modules[type(model).__module__].checkpoint_filter_fn(ckpt, model)
    assert all(torch.equal(v, mapped[k]) for k, v in model.state_dict().items())
    print("loaded", tag, len(mapped))
""")


def test_pretrained_true_loads_the_cached_hub_file(tmp_path):
    """huggingface_hub's cache (HF_HOME) with HF_HUB_OFFLINE=1, in a fresh interpreter (the hub reads both when
    it is imported): efficient_vmamba_tiny's file placed as a download would have left it."""
    tag = "efficient_vmamba_tiny.in1k"
    hub_id, filename, key_list = HF_RELEASES[tag]
    repo = tmp_path / "hub" / ("models--" + hub_id.replace("/", "--"))
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    path = repo / "snapshots" / revision / filename
    torch.save(official_file(key_list), path)
    env = dict(os.environ, HF_HOME=str(tmp_path), HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", HF_SCRIPT, tag, str(path)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"loaded {tag}" in out.stdout
