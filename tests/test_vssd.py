"""VSSD family: parameter counts, official checkpoint mapping and logits (released form and the causal /
bidirectional / grouped ablations), the entry an official file loads, forward/backward, timm API, input errors."""
from __future__ import annotations

import os
import re
import sys
import types

import pytest
import timm
import torch

from _helpers import load_tool, n_params, read_key_file, synthetic_official_state_dict

import vssm  # noqa: F401  (registers the models)
from vssm import CheckpointMismatchError
from vssm.vssd import VSSD, checkpoint_filter_fn

torch.set_num_threads(min(2, torch.get_num_threads()))

HERE = os.path.dirname(os.path.abspath(__file__))
# Made by the official VSSD code (random weights, naive CPU SSD): official-layout state dicts of small configs
# (the released non-causal form and the causal / bidirectional / grouped-without-positive-dA ablations), shared
# inputs and the official eval logits. See the file's 'note'.
MICRO = os.path.join(HERE, "data", "vssd_official_micro.pt")

OFFICIAL_PARAMS = {"vssd_micro": 13_512_964, "vssd_tiny": 24_270_724, "vssd_small": 40_075_650,
                   "vssd_base": 88_823_151}


def ours_args(cfg: dict) -> dict:
    """Our constructor arguments for an official VMAMBA2 config (the file's 'configs')."""
    form = "noncausal" if cfg["linear_attn_duality"] else ("bidirectional" if cfg["bidirection"] else "causal")
    return dict(embed_dim=cfg["embed_dim"], depths=cfg["depths"], num_heads=cfg["num_heads"], d_state=cfg["d_state"],
                ssd_ngroups=cfg["ssd_ngroups"], ssd_chunk_size=cfg["ssd_chunk_size"], mlp_ratio=cfg["mlp_ratio"],
                attn_stages=[t == "standard" for t in cfg["attn_types"]], ssd_form=form,
                positive_dA=cfg["ssd_positve_dA"], num_classes=cfg["num_classes"])


@pytest.fixture(scope="module")
def micro_ref():
    return torch.load(MICRO, weights_only=True)


def released(micro_ref, **kwargs):
    torch.manual_seed(0)
    return VSSD(**dict(ours_args(micro_ref["configs"]["released"]), **kwargs))


# ---- registry, parameter counts ------------------------------------------------------------------------

def test_registered():
    assert set(OFFICIAL_PARAMS) <= set(timm.list_models("vssd*"))
    for name in OFFICIAL_PARAMS:
        assert f"{name}.in1k" in timm.list_pretrained(f"{name}*")
    for name in ("vssd_tiny", "vssd_small", "vssd_base"):
        assert f"{name}.in1k_mesa" in timm.list_pretrained(f"{name}*")
    files = {timm.models.get_pretrained_cfg(n).hf_hub_filename for n in timm.list_pretrained("vssd*")}
    assert files == {"vssd_micro_best.pth", "vssd_tiny_best_ema.pth", "vssd_small_best_ema.pth",
                     "vssd_base_best_ema.pth", "vssd_tiny_e300_with_mesa.pth", "vssd_small_e300_with_mesa.pth",
                     "vssd_base_e300_with_mesa.pth"}


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_param_count_and_official_layout(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert n_params(model) == OFFICIAL_PARAMS[name]
    official = read_key_file(name)
    assert sum(int(torch.Size(s).numel()) for k, s in official.items()
               if not re.search(r"running_|num_batches", k)) == OFFICIAL_PARAMS[name]
    sd = {k: torch.empty(s, device="meta") for k, s in official.items()}
    assert set(checkpoint_filter_fn(sd, model)) == set(model.state_dict())


# ---- weight-exactness against the official code ---------------------------------------------------------

@pytest.mark.parametrize("config", ["released", "causal", "bidirectional", "groups_na"])
def test_official_logits_micro(micro_ref, config):
    model = VSSD(**ours_args(micro_ref["configs"][config])).eval()
    model.load_state_dict(checkpoint_filter_fn(micro_ref["state_dicts"][config], model), strict=True)
    with torch.no_grad():
        for x, ref in zip(micro_ref["inputs"], micro_ref["logits"][config]):
            assert (model(x) - ref).abs().max() < 1e-5


def _cfg_node(monkeypatch):
    """yacs ``CfgNode`` (a stand-in under the same name when yacs is not installed), as official files pickle it."""
    try:
        from yacs.config import CfgNode
    except ImportError:
        CfgNode = type("CfgNode", (dict,), {"__module__": "yacs.config"})
        config = types.ModuleType("yacs.config")
        config.CfgNode = CfgNode
        monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
        monkeypatch.setitem(sys.modules, "yacs.config", config)
    node = CfgNode()
    node["MODEL"] = CfgNode()
    node["MODEL"]["NAME"] = "vssd_micro_e300"
    return node


def test_official_file_through_timm_takes_the_published_entry(micro_ref, tmp_path, monkeypatch):
    """An official file (``model``, ``model_ema``, a yacs config) loads through timm's file overlay: VSSD-Micro's
    published accuracy is ``model``'s, the other releases' is ``model_ema``'s; ``pretrained_key`` overrides."""
    sd = micro_ref["state_dicts"]["released"]
    g = torch.Generator().manual_seed(3)
    other = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in sd.items()}
    args = {k: v for k, v in ours_args(micro_ref["configs"]["released"]).items() if k != "num_classes"}
    x, ref = micro_ref["inputs"][1], micro_ref["logits"]["released"][1]

    def logits(name, checkpoint, **kwargs):
        path = tmp_path / f"{name}.pth"
        torch.save(checkpoint, path)
        model = timm.create_model(name, pretrained=True, num_classes=10, **args, **kwargs,
                                  pretrained_cfg_overlay=dict(file=str(path), num_classes=10)).eval()
        with torch.no_grad():
            return model(x)

    config = _cfg_node(monkeypatch)
    micro_file = {"model": sd, "model_ema": other, "config": config, "epoch": 299, "max_accuracy": 82.5}
    assert (logits("vssd_micro", micro_file) - ref).abs().max() < 1e-5
    ema_file = {"model": other, "model_ema": sd, "config": config, "epoch": 299}
    assert (logits("vssd_tiny", ema_file) - ref).abs().max() < 1e-5
    assert (logits("vssd_micro", ema_file, pretrained_key="model_ema") - ref).abs().max() < 1e-5
    assert (logits("vssd_base", sd) - ref).abs().max() < 1e-5  # a bare state dict
    assert (logits("vssd_micro", ema_file) - ref).abs().max() > 1e-2  # the wrong entry differs


def test_synthetic_tiny_loads_strictly(tmp_path):
    sd = synthetic_official_state_dict("vssd_tiny")
    dense = dict(sd, **{f"outnorm{i}.weight": torch.ones(64 * 2 ** i) for i in range(4)})  # official backbone
    with torch.device("meta"):
        model = timm.create_model("vssd_tiny")
    model.load_state_dict(checkpoint_filter_fn({"model": dense}, model), strict=True, assign=True)
    assert not any(t.is_meta for t in list(model.parameters()) + list(model.buffers()))
    assert torch.equal(model.stages[1].downsample.expand.weight, sd["layers.0.downsample.conv.0.conv.weight"])
    assert torch.equal(model.stages[3].downsample.proj.bn.running_var,
                       sd["layers.2.downsample.conv.2.norm.running_var"])
    assert torch.equal(model.stages[3].blocks[1].mixer.qkv.weight, sd["layers.3.blocks.1.attn.to_qkv.weight"])
    assert torch.equal(model.stem.conv2[1].bn.weight, sd["patch_embed.conv2.1.norm.weight"])
    assert torch.equal(model.head.fc.weight, sd["head.weight"])
    assert set(checkpoint_filter_fn(model.state_dict(), model)) == set(model.state_dict())  # ours passes


def test_checkpoint_errors_name_keys(micro_ref):
    model = released(micro_ref)
    sd = dict(micro_ref["state_dicts"]["released"])
    sd.pop("layers.0.blocks.0.attn.A_log")
    sd["layers.1.blocks.0.attn.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as err:
        checkpoint_filter_fn(sd, model)
    assert "stages.0.blocks.0.mixer.A_log" in str(err.value) and "stages.1.blocks.0.mixer.extra" in str(err.value)


# ---- forward / backward, operator options --------------------------------------------------------------

def test_forward_backward_and_grad_checkpointing(micro_ref):
    model = released(micro_ref, drop_path_rate=0.1).train()
    x = torch.randn(2, 3, 32, 32)
    model(x).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    model.set_grad_checkpointing(True)
    model(x).sum().backward()


def test_non_multiple_of_32_rounds_up_like_the_dense_backbone(micro_ref):
    model = released(micro_ref).eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, 200, 200), intermediates_only=True)
        assert [tuple(f.shape[-2:]) for f in feats] == [(50, 50), (25, 25), (13, 13), (7, 7)]
        assert model(torch.randn(1, 3, 200, 200)).shape == (1, 10)
        assert model(torch.randn(1, 3, 1, 1)).shape == (1, 10)


@pytest.mark.parametrize("form", ["noncausal", "causal", "bidirectional"])
def test_ssd_backends_agree_in_the_model(form):
    args = dict(embed_dim=8, depths=(1, 1), num_heads=(2, 2), attn_stages=(False, False), d_state=4, ssd_ngroups=2,
                ssd_chunk_size=8, ssd_form=form, num_classes=5)
    x = torch.randn(1, 3, 32, 64)
    outs = []
    for backend in ("reference", "chunked"):
        torch.manual_seed(0)
        model = VSSD(ssd_backend=backend, **args).eval()
        with torch.no_grad():
            outs.append(model(x))
    assert (outs[0] - outs[1]).abs().max() < 1e-5


def test_fx_trace_and_compile_graph(micro_ref):
    from timm.models import create_feature_extractor
    model = released(micro_ref).eval()
    x = torch.randn(1, 3, 64, 64)
    # the trunk (StagedBackbone.check_input, shared by all families, is Python control flow on the input shape)
    trunk = torch.nn.Sequential(model.stem, model.stages)
    extractor = create_feature_extractor(trunk, return_nodes={"1.2": "s3", "1.3": "s4"})
    with torch.no_grad():
        out = extractor(x)
        assert torch.allclose(out["s4"], trunk(x), atol=1e-6) and out["s3"].shape == (1, 4, 4, 32)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


def test_flops_tool_matches_published_up_to_fvcore_ssd_count():
    """Published 4.47G (fvcore): its matmul handler counts each SSD product ``(b, 1, ., .) @ (b, H, ., .)`` once,
    not H times, i.e. ``2 L N d_inner (1 - 1/H)`` multiply-adds less per SSD block than our count."""
    flops = load_tool("flops")
    with torch.device("meta"):
        model = timm.create_model("vssd_tiny")
    result = flops.count_model(model, (3, 224, 224))
    under = sum(depth * 2 * (56 // 2 ** i) ** 2 * 64 * 128 * 2 ** i * (1 - 1 / heads)
                for i, (depth, heads) in enumerate(zip((2, 4, 8), (2, 4, 8))))
    assert abs((result["flops"] - under) / 1e9 - 4.47) / 4.47 < 0.01
    assert flops.PUBLISHED_GFLOPS["vssd_tiny"] == 4.47


# ---- timm API ------------------------------------------------------------------------------------------

def test_features_only_and_api(micro_ref):
    args = {k: v for k, v in ours_args(micro_ref["configs"]["released"]).items() if k != "num_classes"}
    model = timm.create_model("vssd_micro", features_only=True, **args)
    assert model.feature_info.channels() == [8, 16, 32, 64] and model.feature_info.reduction() == [4, 8, 16, 32]
    assert [tuple(f.shape) for f in model(torch.randn(1, 3, 64, 96))] == [
        (1, 8, 16, 24), (1, 16, 8, 12), (1, 32, 4, 6), (1, 64, 2, 3)]
    model = released(micro_ref)  # (intermediates, classifier, pruning: tests/test_timm_contract.py)
    assert {n for n in model.no_weight_decay() if "stages.0.blocks.0" in n} == {
        f"stages.0.blocks.0.mixer.{p}" for p in ("A_log", "D", "dt_bias")}
    cfg = timm.create_model("vssd_micro", **args).pretrained_cfg
    assert cfg["first_conv"] == "stem.conv1.conv" and cfg["classifier"] == "head.fc"


def test_bad_inputs(micro_ref):
    model = released(micro_ref).eval()
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(batch, 3, H, W\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="unknown SSD form 'diagonal'"):
        VSSD(embed_dim=8, depths=(1,), num_heads=(2,), attn_stages=(False,), ssd_form="diagonal")
    with pytest.raises(ValueError, match="not divisible by num_heads 3"):
        VSSD(embed_dim=8, depths=(1,), num_heads=(3,), attn_stages=(False,))
    with pytest.raises(ValueError, match="must have the same length"):
        VSSD(embed_dim=8, depths=(1, 1), num_heads=(2,))
    with pytest.raises(ValueError, match="even number of heads"):
        VSSD(embed_dim=8, depths=(1,), num_heads=(1,), attn_stages=(False,), ssd_form="bidirectional")(
            torch.randn(1, 3, 32, 32))
