"""The contract of timm's own model tests (timm's tests/test_models.py) for every vssm model family.

Families come from the registry: a family is the set of timm entrypoints defined in one module ``vssm.<family>``;
each is tested on the model and kwargs of its row in ``_helpers.FAMILY_TEST_MODELS`` (a family without a row fails
``test_every_family_is_found``). This file holds the API contract every family shares; the per-family test files
keep what is the family's own (official orders, key maps, parity with the official outputs). The checks follow
timm's: forward (and the same output with grad checkpointing), backward (every parameter gets a gradient), default
cfgs (feature / pre-logits sizes, ``reset_classifier(0)`` and ``reset_classifier(0, '')``, ``num_classes=0,
global_pool=''``, the cfg's classifier and first conv), the classifier, ``no_weight_decay`` and timm's optimizer
factory with layer decay, ``features_only`` (also on a subset of stages), ``forward_intermediates`` (norm, early
stop), ``prune_intermediate_layers``, and torch.fx: symbolic tracing through timm's notrace registry, forward equal
to the model's, backward to every parameter, and FX feature extraction of the stages.
Inputs are small (64 px) to keep the file fast.
"""
from __future__ import annotations

import math
from typing import Tuple

import pytest
import timm
import torch
import timm.optim
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules

from _helpers import FAMILY_TEST_MODELS, family_params, family_test_model, vssm_families

torch.set_num_threads(min(2, torch.get_num_threads()))

fx_extraction = pytest.importorskip("torchvision.models.feature_extraction")

TARGET_SIZE = 64
FAMILIES = vssm_families()
ALL_MODELS = sorted(n for names in FAMILIES.values() for n in names)


def create(family: str, **kwargs) -> torch.nn.Module:
    name, small = family_test_model(family)
    torch.manual_seed(0)
    return timm.create_model(name, **dict(small, **kwargs))


def input_size(model: torch.nn.Module) -> Tuple[int, int, int]:
    """timm's choice: the cfg size for fixed-size models, else a small size the model accepts."""
    cfg = model.pretrained_cfg
    if cfg.get("fixed_input_size"):
        return tuple(cfg["input_size"])
    side = max(TARGET_SIZE, *(cfg.get("min_input_size") or (0, 0, 0))[1:])
    return cfg["input_size"][0], side, side


def as_tensor(out) -> torch.Tensor:
    return torch.cat(out) if isinstance(out, (tuple, list)) else out


parametrize_family = pytest.mark.parametrize("family", family_params())


def test_every_family_is_found():
    """The registry's families and the test table agree: each family has one row naming one of its models."""
    assert sorted(FAMILIES) == sorted(FAMILY_TEST_MODELS)
    for family, (name, _) in FAMILY_TEST_MODELS.items():
        assert name in FAMILIES[family], f"FAMILY_TEST_MODELS names {name}, which {family} does not register"
    with pytest.raises(KeyError, match="FAMILY_TEST_MODELS"):
        family_test_model("vssm.no_such_family")


def trunk(model: torch.nn.Module) -> torch.nn.Sequential:
    """The stages of a staged family, the layers of a plain one."""
    return model.stages if hasattr(model, "stages") else model.layers


# ---- forward / backward -----------------------------------------------------------------------------------

@parametrize_family
def test_forward(family):
    model = create(family).eval()
    x = torch.randn(1, *input_size(model))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@parametrize_family
def test_backward(family):
    model = create(family, num_classes=42).train()
    out = model(torch.randn(2, *input_size(model)))
    assert isinstance(out, torch.Tensor), "training forward must return plain logits (timm's train.py)"
    assert out.shape == (2, 42) and torch.isfinite(out).all()
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


# ---- default cfgs and the head ---------------------------------------------------------------------------

@parametrize_family
def test_default_cfg_and_head(family):
    model = create(family).eval()
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    cfg = model.pretrained_cfg
    size = input_size(model)
    x = torch.randn(1, *size)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.head_hidden_size)
        spatial = feats.dim() == 4
        if spatial:  # timm's standard models: (un-pooled) feature maps at the last reduction
            fmt = getattr(model, "output_fmt", "NCHW")
            sp, ch = get_spatial_dim(fmt), get_channel_dim(fmt)
            red = model.feature_info[-1]["reduction"]
            assert feats.shape[ch] == model.num_features
            assert tuple(feats.shape[i] for i in sp) == tuple(math.ceil(s / red) for s in size[1:])
            assert tuple(cfg["pool_size"]) == tuple(math.ceil(s / red) for s in cfg["input_size"][1:])
        else:  # token models (timm's non-standard set): (B, N, C)
            assert feats.shape[-1] == model.num_features

        model.reset_classifier(0)
        assert model.num_classes == 0
        out = model(x)
        assert out.shape == pre.shape
        torch.testing.assert_close(out, pre)
        if spatial:
            model.reset_classifier(0, "")  # no classifier, no pooling
            out = model(x)
            assert out.dim() == 4 and tuple(out.shape[i] for i in sp) == tuple(feats.shape[i] for i in sp)
            out = create(family, num_classes=0, global_pool="").eval()(x)
            assert out.dim() == 4 and tuple(out.shape[i] for i in sp) == tuple(feats.shape[i] for i in sp)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_pretrained_cfg_names_real_modules(name):
    """Every registered model (meta device): the cfg's classifier and first conv exist, the cfg is complete."""
    with torch.device("meta"):
        model = timm.create_model(name)
    cfg = model.pretrained_cfg
    keys = model.state_dict().keys()
    classifiers = cfg["classifier"] if isinstance(cfg["classifier"], (tuple, list)) else (cfg["classifier"],)
    for c in classifiers:
        assert c + ".weight" in keys, f"{name}: classifier {c} not in the model"
    first = cfg["first_conv"] if isinstance(cfg["first_conv"], (tuple, list)) else (cfg["first_conv"],)
    for c in first:
        assert c + ".weight" in keys, f"{name}: first_conv {c} not in the model"
        assert model.get_submodule(c).weight.shape[1] == cfg["input_size"][0]
    for field in ("input_size", "crop_pct", "interpolation", "mean", "std", "license"):
        assert cfg.get(field) is not None, f"{name}: pretrained cfg has no {field}"


@parametrize_family
def test_classifier_and_reset(family):
    """``forward_head(pre_logits=True)`` then the classifier(s) (a distilled pair averages) is the model's output;
    ``reset_classifier(n)`` gives ``n`` outputs."""
    model = create(family).eval()
    x = torch.randn(1, *input_size(model))
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        classifiers = model.get_classifier()
        classifiers = classifiers if isinstance(classifiers, tuple) else (classifiers,)
        torch.testing.assert_close(torch.stack([c(pre) for c in classifiers]).mean(0), model(x))
        model.reset_classifier(5)
        assert model(x).shape == (1, 5) and model.num_classes == 5


@parametrize_family
def test_no_weight_decay_and_optimizer(family):
    """The SSM parameters (flagged ``_no_weight_decay``) are in ``no_weight_decay()``, which names only parameters
    (or timm's token names); timm's optimizer factory with layer decay keeps them out of weight decay."""
    model = create(family)
    params = dict(model.named_parameters())
    flagged = {n for n, p in params.items() if getattr(p, "_no_weight_decay", False)}
    nwd = model.no_weight_decay()
    assert flagged and flagged <= nwd and nwd - {"pos_embed", "cls_token"} <= set(params)
    optimizer = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.7)
    assert len(optimizer.param_groups) > 2
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert not [n for n in flagged if id(params[n]) in decayed]


# ---- feature extraction ----------------------------------------------------------------------------------

@parametrize_family
@pytest.mark.parametrize("feature_cls", [None, "getter"])
def test_features_only(family, feature_cls):
    kwargs = dict(feature_cls=feature_cls) if feature_cls else {}
    model = create(family, features_only=True, **kwargs).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    size = input_size(model)
    size = (size[0], size[1], size[2] + 32) if not model.pretrained_cfg.get("fixed_input_size") else size
    with torch.no_grad():
        outs = model(torch.randn(1, *size))
    assert len(outs) == len(channels)
    for c, r, o in zip(channels, reductions, outs):
        assert o.shape[0] == 1 and o.shape[1] == c  # NCHW
        assert o.shape[2] <= math.ceil(size[1] / r) + 1 and o.shape[3] <= math.ceil(size[2] / r) + 1
        assert torch.isfinite(o).all()


@parametrize_family
def test_forward_intermediates(family):
    model = create(family).eval()
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    x = torch.randn(1, *input_size(model))
    with torch.no_grad():
        final, inters = model.forward_intermediates(x, output_fmt="NCHW")
        assert len(inters) == len(info.channels()) >= 3
        for c, r, o in zip(info.channels(), info.reduction(), inters):
            assert o.shape[:2] == (1, c)
            assert o.shape[2] <= math.ceil(x.shape[2] / r) + 1 and o.shape[3] <= math.ceil(x.shape[3] / r) + 1
        torch.testing.assert_close(final, model.forward_features(x))
        only = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(only) == 2 and torch.equal(only[-1], inters[-1])
        model.set_grad_checkpointing()
        torch.testing.assert_close(model.forward_intermediates(x)[0], final, rtol=1e-4, atol=1e-5)
        raw = model.forward_intermediates(x, indices=1, output_fmt="NHWC", intermediates_only=True)
        normed = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NHWC", intermediates_only=True)
        torch.testing.assert_close(normed[0], model.norm(raw[0]))
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
        assert len(early) == 1 and torch.equal(early[0], inters[0])
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NLC")


@parametrize_family
def test_features_subset_and_prune(family):
    """``features_only`` on stages 0-1 keeps only those stages and returns the model's intermediates;
    ``prune_intermediate_layers`` likewise, with the head dropped."""
    model = create(family).eval()
    x = torch.randn(1, *input_size(model))
    with torch.no_grad():
        ref = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        features = create(family, features_only=True, out_indices=(0, 1)).eval()  # same seed: the same weights
        assert features.feature_info.channels() == [model.feature_info[i]["num_chs"] for i in (0, 1)]
        assert len(trunk(features.model)) == 2
        for f, r in zip(features(x), ref):
            torch.testing.assert_close(f, r)
        assert model.prune_intermediate_layers([0, 1]) == [0, 1]
        assert len(trunk(model)) == 2 and model.num_classes == 0
        assert model.num_features == model.feature_info[1]["num_chs"]
        for f, r in zip(model.forward_intermediates(x, indices=[0, 1], intermediates_only=True), ref):
            torch.testing.assert_close(f, r)


# ---- torch.fx ---------------------------------------------------------------------------------------------

TRACER_KWARGS = dict(param_shapes_constant=True)


def tracer_kwargs() -> dict:
    return dict(TRACER_KWARGS, leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())


def fx_model(model: torch.nn.Module) -> torch.nn.Module:
    """timm's test: a feature extractor returning the last graph node, traced in train and eval mode."""
    train_nodes, eval_nodes = fx_extraction.get_graph_node_names(model, tracer_kwargs=tracer_kwargs())
    return fx_extraction.create_feature_extractor(model, train_return_nodes=[train_nodes[-1]],
                                                  eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs())


@parametrize_family
def test_fx_forward(family):
    model = create(family).eval()
    x = torch.randn(1, *input_size(model))
    with torch.inference_mode():
        out = as_tensor(model(x))
        fx_out = as_tensor(tuple(fx_model(model)(x).values()))
    assert torch.equal(fx_out, out)


@parametrize_family
def test_fx_backward(family):
    model = create(family, num_classes=42).train()
    n_params = sum(p.numel() for p in model.parameters())
    traced = fx_model(model)
    out = as_tensor(tuple(traced(torch.randn(2, *input_size(model))).values()))
    assert out.shape == (2, 42)
    out.mean().backward()
    missing = [n for n, p in traced.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    assert sum(p.grad.numel() for p in traced.parameters()) == n_params


@parametrize_family
def test_fx_feature_extraction(family):
    """timm's FX feature extractor (``feature_cls='fx'``) returns the feature_info modules' outputs: the stage maps
    of ``forward_intermediates`` (NHWC or NCHW), or a plain model's layer tokens."""
    model = create(family).eval()
    fx = create(family, features_only=True, feature_cls="fx").eval()  # same seed: the same weights
    x = torch.randn(1, *input_size(model))
    taken = list(fx.feature_info.out_indices)  # the default out_indices
    with torch.no_grad():
        feats = fx(x)
        ref = model.forward_intermediates(x, indices=taken, output_fmt="NHWC", intermediates_only=True)
    assert len(feats) == len(ref) == len(taken) >= 3
    for f, r, info in zip(feats, ref, [model.feature_info[i] for i in taken]):
        if f.dim() == 3:  # a plain (token) model's layer output (B, N, C): the tokens of the map, maybe more
            assert f.shape[0] == 1 and f.shape[2] == info["num_chs"] and f.shape[1] >= r.shape[1] * r.shape[2]
            continue
        if f.shape != r.shape:  # a module output in NCHW
            r = r.permute(0, 3, 1, 2)
        torch.testing.assert_close(f, r)
