"""tools/compare.py on the CPU: argument errors, what it says when official code or kernels are missing, importing
official models from checkouts (fake ones in tmp_path, laid out as the official repositories are), and the
timing, sweep and stability loops on tiny models. No GPU figures come from here."""
import importlib
import sys
import textwrap

import pytest
import timm
import torch
import torch.nn as nn

import vssm  # noqa: F401  (registers the models)
from _helpers import load_tool

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def compare():
    return load_tool("compare")


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def fake_vmamba(root, width=8):
    """A checkout laid out as MzeroMiko/VMamba: classification/models/vmamba.py, its kernel imported at module
    level, and a timm registration under a vssm model's name (the official GroupMamba code does register one)."""
    write(root / "classification/models/__init__.py", "from .vmamba import vmamba_tiny_s1l8\n")
    write(root / "classification/models/vmamba.py", f"""
        import torch.nn as nn
        from timm.models import register_model
        import selective_scan_cuda_oflex

        class OfficialVSSM(nn.Sequential):
            pass

        def vmamba_tiny_s1l8(channel_first=True):
            return OfficialVSSM(nn.Conv2d(3, {width}, 4, 4), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                nn.Linear({width}, 1000))

        @register_model
        def vmamba_tiny(**kwargs):
            return vmamba_tiny_s1l8()
        """)
    return root


def fake_groupmamba(root):
    """A checkout laid out as Amshaker/GroupMamba: another top-level package named ``models``."""
    write(root / "classification/models/__init__.py", "from .groupmamba import groupmamba_tiny\n")
    write(root / "classification/models/groupmamba.py", """
        import torch.nn as nn
        import selective_scan_cuda_core

        class GroupMamba(nn.Linear):
            pass

        def groupmamba_tiny(**kwargs):
            return GroupMamba(3, 1000)
        """)
    return root


@pytest.fixture
def kernels(tmp_path):
    """A folder with stand-ins for the built extensions (importable names only)."""
    folder = tmp_path / "kernels"
    for name in ("selective_scan_cuda_oflex", "selective_scan_cuda_core"):
        write(folder / f"{name}.py", "def fwd(*args):\n    raise NotImplementedError\n")
    yield folder
    for name in ("selective_scan_cuda_oflex", "selective_scan_cuda_core"):
        sys.modules.pop(name, None)
    while str(folder) in sys.path:
        sys.path.remove(str(folder))


# ---- arguments --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    (["--official", "vmamba"], "--official takes FAMILY=PATH"),
    (["--official", "mamba2=/x"], "unknown family 'mamba2'"),
    (["--models", "vmamba_tinyy"], "unknown model(s) vmamba_tinyy"),
    (["--reference", "convnext_tinyy", "--device", "cpu"], "unknown model(s) convnext_tinyy"),
    (["--scan", "--device", "cpu"], "--scan needs a CUDA device"),
])
def test_run_refuses_bad_arguments(compare, argv, message):
    with pytest.raises(SystemExit) as err:
        compare.main(argv)
    assert message in str(err.value.code)


@pytest.mark.parametrize("argv,message", [
    (["--batch", "0"], "must be at least 1"),
    (["--states", "1,x"], "comma-separated integers"),
    (["--resolutions", "224,-512"], "positive integers"),
    (["--scan", "--stability", "3"], "not allowed with argument"),
    (["--stability", "0"], "must be at least 1"),
])
def test_parser_refuses_bad_values(compare, capsys, argv, message):
    with pytest.raises(SystemExit) as err:
        compare.main(argv)
    assert err.value.code == 2
    assert message in capsys.readouterr().err


def test_benchmark_has_the_compare_subcommand(capsys):
    benchmark = load_tool("benchmark")
    with pytest.raises(SystemExit) as err:
        benchmark.main(["compare", "--official", "nope=/x", "--device", "cpu"])
    assert "unknown family 'nope'" in str(err.value.code)


# ---- official code: what is missing, and importing it -------------------------------------------------------

def test_missing_checkout_says_how_to_give_one(compare):
    with pytest.raises(compare.OfficialUnavailable) as err:
        compare.official_model("local_vmamba_tiny", {})
    text = str(err.value)
    assert "--official localmamba=PATH" in text and "github.com/hunto/LocalMamba" in text
    assert "downloads nothing" in text


def test_missing_or_wrong_checkout_path(compare, tmp_path):
    with pytest.raises(compare.OfficialUnavailable, match="no such directory"):
        compare.official_model("vmamba_tiny", {"vmamba": tmp_path / "absent"})
    (tmp_path / "empty").mkdir()
    with pytest.raises(compare.OfficialUnavailable, match="classification/models/vmamba.py is missing"):
        compare.official_model("vmamba_tiny", {"vmamba": tmp_path / "empty"})


def test_missing_kernel_names_the_extension_and_the_build(compare, tmp_path):
    root = fake_groupmamba(tmp_path / "GroupMamba")
    with pytest.raises(compare.OfficialUnavailable) as err:
        compare.official_model("groupmamba_tiny", {"groupmamba": root}, [tmp_path])
    text = str(err.value)
    assert "selective_scan_cuda_core" in text and "tools/build_official_kernels.py" in text
    with pytest.raises(compare.OfficialUnavailable, match="--kernel-path .*nowhere: no such directory"):
        compare.official_model("groupmamba_tiny", {"groupmamba": root}, [tmp_path / "nowhere"])


def test_missing_python_package_is_named(compare, tmp_path, kernels):
    root = fake_vmamba(tmp_path / "VMamba")
    (root / "classification/models/vmamba.py").write_text("import fvcore_not_installed_here\n")
    with pytest.raises(compare.OfficialUnavailable, match="no module named 'fvcore_not_installed_here'"):
        compare.official_model("vmamba_tiny", {"vmamba": root}, [kernels])
    assert "models" not in sys.modules


def test_official_models_import_in_isolation(compare, tmp_path, kernels):
    """Two checkouts that both name their package ``models``: each gives its own model, the kernels each
    imported are reported, nothing of them stays in sys.modules / sys.path, and timm's registry is as before."""
    before = timm.models.model_entrypoint("vmamba_tiny")
    path_before = list(sys.path)
    checkouts = {"vmamba": fake_vmamba(tmp_path / "VMamba"), "groupmamba": fake_groupmamba(tmp_path / "GroupMamba")}
    vm, vm_kernels = compare.official_model("vmamba_tiny", checkouts, [kernels])
    gm, gm_kernels = compare.official_model("groupmamba_tiny", checkouts, [kernels])
    assert type(vm).__name__ == "OfficialVSSM" and type(gm).__name__ == "GroupMamba"
    assert (vm_kernels, gm_kernels) == ("selective_scan_cuda_oflex", "selective_scan_cuda_core")
    assert vm(torch.randn(1, 3, 8, 8)).shape == (1, 1000)
    assert not any(m == "models" or m.startswith("models.") for m in sys.modules)
    # torch.compile imports a traced function's module by its name: the isolated modules stay importable
    assert importlib.import_module(type(vm).__module__).OfficialVSSM is type(vm)
    assert importlib.import_module(type(gm).__module__).GroupMamba is type(gm)
    assert [p for p in sys.path if p not in path_before] == [str(kernels)]
    assert timm.models.model_entrypoint("vmamba_tiny") is before


def test_unknown_official_counterpart(compare):
    with pytest.raises(compare.OfficialUnavailable, match="no official implementation known for 'vmamba_nano'"):
        compare.official_model("vmamba_nano", {})


# ---- the loops, on tiny models ------------------------------------------------------------------------------

def tiny_classifier(width=4):
    return nn.Sequential(nn.Conv2d(3, width, 4, 4), nn.GELU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, 1000))


@pytest.fixture
def tiny_models(compare, monkeypatch):
    """vssm and timm models replaced by tiny classifiers (the loops are under test, not the models)."""
    monkeypatch.setattr(compare, "vssm_model", lambda name: tiny_classifier())
    monkeypatch.setattr(compare, "reference_model", lambda name: tiny_classifier(6))

def args_for(compare, *argv):
    import argparse
    p = argparse.ArgumentParser()
    compare.add_arguments(p)
    return p.parse_args(["--device", "cpu", *argv])


def test_interleaved_timing_on_cpu(compare, tmp_path, kernels, tiny_models, monkeypatch, capsys):
    """vssm, the official model (a fake checkout) and a timm reference, eager and compiled: every subject timed
    once per round, img/s = batch / median time, the ratio columns vssm / official of the same mode."""
    monkeypatch.setitem(compare.OFFICIAL, "vmamba_nano", compare.OFFICIAL["vmamba_tiny"])
    args = args_for(compare, "--models", "vmamba_nano", "--official", f"vmamba={fake_vmamba(tmp_path / 'VMamba')}",
                    "--kernel-path", str(kernels), "--reference", "resnet10t", "--batch", "2", "--img", "32",
                    "--rounds", "2", "--iters", "1", "--warmup-iters", "1", "--compile", "--compile-backend", "eager")
    subjects = compare.compare_models(args, torch.device("cpu"))
    assert [(s.model_name, s.impl, s.mode) for s in subjects] == [
        (m, impl, mode) for m, impl in (("vmamba_nano", "vssm"), ("vmamba_nano", "official"), ("resnet10t", "timm"))
        for mode in ("eager", "compiled")]
    assert subjects[2].note == "selective_scan_cuda_oflex"
    assert not subjects[2].x.is_contiguous(memory_format=torch.channels_last)  # NCHW for the official code
    for s in subjects:
        assert len(s.times["infer"]) == len(s.times["train"]) == 2 and min(s.times["train"]) > 0
        assert s.img_per_s("train") == pytest.approx(2 / (sum(s.times["train"]) / 2))  # median of two rounds
        assert s.peak_gib is None  # no memory figures off the GPU
    out = capsys.readouterr().out
    ratio = subjects[0].img_per_s("infer") / subjects[2].img_per_s("infer")
    row = next(line for line in out.splitlines() if line.startswith("vmamba_nano") and " vssm " in line
               and " eager " in line)
    assert f"{ratio:.2f}" in row.split()


def test_missing_official_is_reported_and_the_rest_timed(compare, tiny_models, capsys):
    args = args_for(compare, "--models", "vmamba_nano", "--reference", "", "--batch", "1", "--img", "32",
                    "--rounds", "1", "--iters", "1", "--warmup-iters", "1")
    subjects = compare.compare_models(args, torch.device("cpu"))
    assert [s.impl for s in subjects] == ["vssm"]
    assert "MISSING vmamba_nano official: no official implementation known" in capsys.readouterr().out


class BreaksInTraining(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 1000)

    def forward(self, x):
        if self.training:
            raise AssertionError("a compiler bug\nwith a long traceback")
        return self.fc(x.mean((2, 3)))


def test_a_failing_model_is_reported_and_the_rest_timed(compare, monkeypatch, capsys):
    monkeypatch.setattr(compare, "vssm_model", lambda name: BreaksInTraining())
    monkeypatch.setattr(compare, "reference_model", lambda name: tiny_classifier(6))
    args = args_for(compare, "--models", "vmamba_nano", "--reference", "resnet10t", "--batch", "1", "--img", "32",
                    "--rounds", "2", "--iters", "1", "--warmup-iters", "1")
    vssm_subject, timm_subject = compare.compare_models(args, torch.device("cpu"))
    assert vssm_subject.error == "train failed: AssertionError: a compiler bug"
    assert len(timm_subject.times["infer"]) == len(timm_subject.times["train"]) == 2
    out = capsys.readouterr().out
    assert "vmamba_nano            vssm      eager     FAILED train failed: AssertionError: a compiler bug" in out
    assert any(line.startswith("resnet10t") and "FAILED" not in line for line in out.splitlines())


def test_resolution_sweep_on_cpu(compare):
    args = args_for(compare, "--resolution-sweep", "--models", "vmamba_nano", "--resolutions", "32,64",
                    "--batch", "4", "--rounds", "1", "--iters", "1", "--warmup-iters", "1")
    rows = compare.resolution_sweep(args, torch.device("cpu"))
    (_, _, r0, b0, ips0, ratio0), (_, _, r1, b1, ips1, ratio1) = rows
    assert (r0, b0, r1, b1) == (32, 4, 64, 1)  # pixels per batch held
    assert ratio0 == 1.0
    assert ratio1 == pytest.approx(ips1 * 64 ** 2 / (ips0 * 32 ** 2))


class TurnsNaN(nn.Module):
    """A classifier whose logits become NaN from its ``after``-th call on."""

    def __init__(self, after):
        super().__init__()
        self.fc = nn.Linear(3, 1000)
        self.calls, self.after = 0, after

    def forward(self, x):
        self.calls += 1
        out = self.fc(x.mean((2, 3)))
        return out * float("nan") if self.calls > self.after else out


def test_stability_stops_at_the_first_non_finite_loss(compare, monkeypatch, capsys):
    monkeypatch.setattr(compare, "vssm_model", lambda name: TurnsNaN(after=3))
    assert compare.main(["--device", "cpu", "--stability", "10", "--models", "vmamba_nano", "--batch", "2",
                         "--img", "8"]) == 1
    out = capsys.readouterr().out
    assert "3 AMP bf16 steps" in out and "non-finite at step 3" in out


def test_stability_finite_run(compare, tiny_models):
    args = args_for(compare, "--stability", "4", "--models", "vmamba_nano", "--batch", "2", "--img", "32",
                    "--pool", "1")
    res = compare.stability(args, torch.device("cpu"))["vmamba_nano"]
    assert res["steps"] == 4 and res["bad_step"] is None
    assert res["last_loss"] < res["first_loss"]  # one batch, four AdamW steps: it is being fitted
