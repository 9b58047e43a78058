"""The installable package: the wheel holds only ``vssm`` (kernels and scans inside it) and its recipes, requires
no exact pins, and works when installed outside the checkout; every family takes an empty batch."""
from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import timm
import torch

import vssm  # noqa: F401  (registers the families)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True, cwd=out)
    (path,) = out.glob("vssm-*.whl")
    return path


def _metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return zf.read(name).decode()


def test_wheel_has_only_vssm_and_its_recipes(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
    top = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert top == {"vssm"}
    for sub in ("vssm/kernels/selective_scan.py", "vssm/scans/patterns.py", "vssm/recipes/vmamba_tiny_in1k.yaml",
                "vssm/data/localmamba_directions.json"):
        assert sub in names, sub
    assert not any(n.startswith(("kernels/", "scans/")) for n in names)


def test_requirements_have_no_exact_pins(wheel):
    requires = re.findall(r"^Requires-Dist: (.+)$", _metadata(wheel), flags=re.M)
    base = [r for r in requires if "extra ==" not in r]
    assert base and not any("==" in r for r in base), base
    names = {re.split(r"[ <>=!~;\[]", r)[0].lower() for r in base}
    assert {"torch", "timm"} <= names
    assert not names & {"einops", "triton", "matplotlib", "scikit-learn", "tqdm"}, names
    # the declared runtime requirements match setup.cfg (the wheel is built from it)
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    declared = [line.strip() for line in cfg["options"]["install_requires"].splitlines() if line.strip()]
    assert len(declared) == len(base)


def test_installed_wheel_works_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target))
    code = (
        "import sys, torch, timm, vssm\n"
        "from vssm import kernels, scans\n"
        f"assert vssm.__file__.startswith({str(target)!r}), vssm.__file__\n"
        f"assert kernels.__file__.startswith({str(target)!r}), kernels.__file__\n"
        "assert 'kernels' not in sys.modules and 'scans' not in sys.modules\n"
        "m = timm.create_model('vmamba_nano', num_classes=7).eval()\n"
        "with torch.no_grad():\n"
        "    y = m(torch.randn(2, 3, 64, 64))\n"
        "assert y.shape == (2, 7) and torch.isfinite(y).all()\n"
        "print('ok', vssm.__file__)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ok " + str(target))
    cfg = subprocess.run([sys.executable, "-m", "vssm.engine.train", "--config", "vmamba_tiny_in1k", "--print-config"],
                         cwd=elsewhere, env=env, capture_output=True, text=True)
    assert cfg.returncode == 0, cfg.stderr
    assert re.search(r"name: vmamba_tiny\b", cfg.stdout) and "epochs: 300" in cfg.stdout


_SIZES = ("nano", "micro", "atto", "femto", "pico", "tiny", "small", "base", "large", "huge")


def _smallest_per_family():
    """The smallest-named model of each vssm family module (nano < micro < ... < large; ties: shortest name)."""
    def rank(name):
        sizes = [i for i, s in enumerate(_SIZES) if s in name.split("_")]
        return (sizes[0] if sizes else len(_SIZES), len(name), name)
    by_family = {}
    for name in timm.list_models():
        module = timm.models.model_entrypoint(name).__module__
        if module.startswith("vssm.") and (module not in by_family or rank(name) < rank(by_family[module])):
            by_family[module] = name
    return sorted(by_family.values())


@pytest.mark.parametrize("name", _smallest_per_family())
def test_empty_batch(name):
    model = timm.create_model(name, num_classes=5).eval()
    with torch.no_grad():
        y = model(torch.empty(0, 3, 64, 64))
    assert y.shape == (0, 5)
