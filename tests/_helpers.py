"""Shared by the model-family tests: official key lists, synthetic official checkpoints, the FLOP tool."""
from __future__ import annotations

import importlib.util
import os
import re
from typing import Dict, Tuple

import pytest
import timm
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.environ.get("VSSM_REFERENCE_DIR", os.path.join(REPO, "..", "shared", "reference"))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def create_meta(name: str, **kwargs) -> torch.nn.Module:
    """A timm model with parameters on the meta device (sizes and key names without memory)."""
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def read_key_file(official_name: str) -> Dict[str, Tuple[int, ...]]:
    """``{key: shape}`` of an official state dict, from ``shared/reference/<name>.state_dict_keys.txt``
    (lines ``key<TAB>shape<TAB>dtype``); skips the test when the reference is not beside the checkout."""
    path = os.path.join(REFERENCE, f"{official_name}.state_dict_keys.txt")
    if not os.path.exists(path):
        pytest.skip(f"reference key list not found: {path}")
    shapes = {}
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            key, shape, _dtype = line.rstrip("\n").split("\t")
            shapes[key] = tuple(int(s) for s in re.findall(r"\d+", shape))
    return shapes


def synthetic_official_state_dict(official_name: str, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Random tensors in the official layout. BatchNorm running variances are kept positive (finite eval
    outputs) and ``num_batches_tracked`` counters are int64 scalars, as in a real checkpoint."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in read_key_file(official_name).items():
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.05
    return sd


def synthetic_official_checkpoint(official_name: str, seed: int = 0) -> Dict:
    """A training checkpoint as the official repos save it: ``{'model': state_dict, 'epoch': ...}``."""
    return {"model": synthetic_official_state_dict(official_name, seed), "epoch": 300}


def load_tool(name: str):
    """``tools/<name>.py`` as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"vssm_{name}_tool", os.path.join(REPO, "tools", f"{name}.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


# ---- the vssm model families in timm's registry (tests/test_timm_contract.py, tests/test_timm_scripts.py) ----

# THE shared test table: one line per family, ``module -> (model, kwargs)`` that tests/test_timm_contract.py (the
# timm API contract) and tests/test_timm_scripts.py build. kwargs shrink a model that is too slow for a 2-core CPU
# (same code paths, fewer / narrower blocks). A new family is its model file plus one line here.
FAMILY_TEST_MODELS: Dict[str, Tuple[str, dict]] = {
    "vssm.vmamba": ("vmamba_nano", {}),
    "vssm.localmamba": ("local_vmamba_tiny", dict(depths=(1, 1, 1, 1), dims=16, d_state=4,
                                                  directions=["h_flip", "v", "w2", "w7_flip"])),
    "vssm.efficientvmamba": ("efficient_vmamba_tiny", dict(depths=(1, 1, 1, 1), dims=16, d_state=4)),
    "vssm.groupmamba": ("groupmamba_tiny", dict(stem_hidden_dim=8, dims=(16, 16, 32, 32), depths=(1, 1, 1, 1),
                                                mlp_ratios=2)),
    # windows that fit the 64 px test maps (4x4, 2x2): zero-padded windows run LayerNorm on all-zero tokens, whose
    # 1/sqrt(eps) slope compounds over blocks (official behaviour below the window size: full mambavision_tiny at
    # 64 px had a first gradient norm of 9e9 and NaN EMA logits under timm's train.py; 27 with fitting windows)
    "vssm.mambavision": ("mambavision_tiny", dict(dim=32, in_dim=16, depths=(1, 1, 2, 2), num_heads=(2, 2, 4, 4),
                                                  window_size=(8, 8, 4, 2))),
    "vssm.vssd": ("vssd_micro", {}),
    "vssm.vim": ("vim_tiny", {}),
    "vssm.mamband": ("mamba2d_small", {}),
}


def vssm_families() -> Dict[str, list]:
    """``{module: [model names]}``: every registered timm model whose entrypoint is defined in a ``vssm.*`` module."""
    import vssm  # noqa: F401  (registers the families)
    from timm.models._registry import _model_entrypoints

    families: Dict[str, list] = {}
    for name in timm.list_models():
        module = _model_entrypoints[name].__module__
        if module.startswith("vssm."):
            families.setdefault(module, []).append(name)
    return families


def family_test_model(family: str) -> Tuple[str, dict]:
    """(model name, kwargs) a test of ``family`` builds: its row of ``FAMILY_TEST_MODELS``."""
    if family not in FAMILY_TEST_MODELS:
        raise KeyError(f"{family} registers timm models but has no row in tests/_helpers.py FAMILY_TEST_MODELS")
    name, kwargs = FAMILY_TEST_MODELS[family]
    return name, dict(kwargs)


def family_params():
    """pytest params, one per vssm family (id: the module's name after ``vssm.``)."""
    return [pytest.param(f, id=f.split(".", 1)[1]) for f in sorted(vssm_families())]
