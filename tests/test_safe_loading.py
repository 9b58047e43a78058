"""Loading a checkpoint never runs code from it: every loading path refuses a crafted file (the marker its
unpickling would create never appears, the error names the file), while real checkpoints of every kind still load."""
from __future__ import annotations

import argparse
import collections
import random
import sys

import numpy as np
import pytest
import timm
import torch

from vssm import UnsafeCheckpointError, load_checkpoint_file
from vssm.engine import checkpoint as CK
from vssm.engine import train as T
from vssm.engine import validate as V


class _CreatesFile:
    """Pickles as ``open(marker, 'w')``: unpickling it would create the marker file (a stand-in for any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def crafted(tmp_path):
    """A file shaped like a vssm training checkpoint whose unpickling would create ``marker``."""
    marker = tmp_path / "marker"
    model = timm.create_model("vmamba_nano", num_classes=10)
    path = tmp_path / "crafted.pth"
    torch.save({"model": model.state_dict(), "config": {"model": {"name": "vmamba_nano"}},
                "payload": _CreatesFile(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_load_checkpoint_file_refuses_and_names_global(crafted):
    path, marker = crafted
    with pytest.raises(UnsafeCheckpointError, match=r"crafted\.pth.*(builtins|io)\.open"):
        load_checkpoint_file(path)
    assert not marker.exists()


def test_validate_refuses(crafted, tmp_path, capsys):
    path, marker = crafted
    (tmp_path / "data" / "val").mkdir(parents=True)
    with pytest.raises(SystemExit) as exc:
        V.main(["-c", str(path), "--model", "vmamba_nano", "--data", str(tmp_path / "data")])
    assert exc.value.code == 2
    assert "crafted.pth" in capsys.readouterr().err and not marker.exists()


def test_train_resume_refuses(crafted, tmp_path, capsys):
    path, marker = crafted
    with pytest.raises(SystemExit) as exc:
        T.main(["--resume", str(path), "--output", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert "crafted.pth" in capsys.readouterr().err and not marker.exists()


def test_train_pretrained_refuses(crafted, tmp_path, capsys):
    path, marker = crafted
    with pytest.raises(SystemExit) as exc:
        T.main(["--model", "vmamba_nano", "--synthetic", "--pretrained", str(path), "--epochs", "1",
                "--warmup-epochs", "0",
                "--output", str(tmp_path / "out"), "--no-progress", "--no-plot", "--workers", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--pretrained" in err and "crafted.pth" in err and not marker.exists()


def test_timm_pretrained_file_refuses(crafted):
    path, marker = crafted
    with pytest.raises(Exception, match="weights_only"):
        timm.create_model("vmamba_nano", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert not marker.exists()


def test_mm_init_cfg_refuses_unless_opted_in(crafted, monkeypatch):
    pytest.importorskip("mmdet")
    from vssm.mm import VSSMBackbone
    from vssm.mm.compat import UNSAFE_LOAD_ENV
    path, marker = crafted
    monkeypatch.delenv(UNSAFE_LOAD_ENV, raising=False)
    backbone = VSSMBackbone("vmamba_nano", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(UnsafeCheckpointError, match=rf"(?s){UNSAFE_LOAD_ENV}") as exc:
        backbone.init_weights()
    assert "crafted.pth" in str(exc.value) and not marker.exists()
    # the opt-in is a knowing choice: then the file is unpickled as torch < 2.6 did
    monkeypatch.setenv(UNSAFE_LOAD_ENV, "1")
    with pytest.warns(UserWarning, match=UNSAFE_LOAD_ENV):
        VSSMBackbone("vmamba_nano", init_cfg=dict(type="Pretrained", checkpoint=str(path))).init_weights()
    assert marker.exists()


def test_teacher_checkpoint_refuses(crafted):
    from vssm.engine.distill import build_teacher
    path, marker = crafted
    with pytest.raises(UnsafeCheckpointError):
        build_teacher("vmamba_nano", str(path), num_classes=10, device=torch.device("cpu"))
    assert not marker.exists()


# ---- real checkpoints still load ----------------------------------------------------------------------

def test_rng_state_round_trip_loads_weights_only(tmp_path):
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    torch.save({"rng": [CK.rng_state()]}, tmp_path / "ck.pth")
    want = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    CK.set_rng_state(torch.load(tmp_path / "ck.pth", weights_only=True)["rng"][0])  # plain torch, no allowlist
    assert (random.random(), np.random.rand(), torch.rand(1)) == want


def test_checkpoint_written_before_tensor_rng_state_resumes(tmp_path):
    """Files of the previous layout keep numpy's RNG state as an array: they load (numpy data is allowed) and
    restore the same state."""
    np.random.seed(11)
    old = {"model": {"w": torch.ones(2)}, "config": {"model": {"name": "vmamba_nano"}},
           "rng": [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}],
           "meta": {"torch": torch.__version__}}
    want = np.random.rand()
    torch.save(old, tmp_path / "old.pth")
    np.random.seed(0)
    CK.set_rng_state(CK.load(str(tmp_path / "old.pth"))["rng"][0])
    assert np.random.rand() == want


def _fake_yacs(monkeypatch):
    """A yacs-like ``CfgNode`` class under the module name ``yacs.config`` (yacs is not installed here)."""
    yacs, config = type(sys)("yacs"), type(sys)("yacs.config")

    class CfgNode(dict):
        pass
    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode, yacs.config = CfgNode, config
    monkeypatch.setitem(sys.modules, "yacs", yacs)
    monkeypatch.setitem(sys.modules, "yacs.config", config)
    return CfgNode


def test_official_files_with_namespace_and_yacs_config_load(tmp_path, monkeypatch):
    """Vim / timm-style ``args`` (argparse.Namespace) and the yacs config of VMamba / VSSD release files load as
    data, through our loader and through timm's own loader (``import vssm`` allowlists both classes)."""
    CfgNode = _fake_yacs(monkeypatch)
    model = timm.create_model("vmamba_nano")
    cfg = CfgNode(MODEL=CfgNode(NAME="vmamba_nano"))
    cfg.__dict__.update({"__immutable__": True, "__deprecated_keys__": set()})
    torch.save({"model": model.state_dict(), "args": argparse.Namespace(lr=1e-3), "config": cfg},
               tmp_path / "official.pth")
    monkeypatch.delitem(sys.modules, "yacs.config")
    monkeypatch.delitem(sys.modules, "yacs")
    registered = set(torch.serialization.get_safe_globals())
    out = load_checkpoint_file(tmp_path / "official.pth")
    assert set(torch.serialization.get_safe_globals()) == registered  # the process-wide allowlist is kept
    assert out["args"].lr == 1e-3 and out["config"]["MODEL"]["NAME"] == "vmamba_nano"
    assert type(out["config"]) is collections.OrderedDict and out["config"].__dict__["__immutable__"] is True
    loaded = timm.create_model("vmamba_nano", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / "official.pth")))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_mm_checkpoint_of_unpatched_mmengine_loads(tmp_path, monkeypatch):
    """mmengine (without vssm.mm's patch) pickles a HistoryBuffer's statistics as ``getattr(HistoryBuffer,
    'min')``: the guarded getattr resolves exactly those, and refuses any other getattr."""
    pytest.importorskip("mmdet")
    from mmengine.logging import HistoryBuffer

    from vssm.mm.compat import load_checkpoint_file as mm_load
    monkeypatch.setattr(HistoryBuffer, "__getstate__", lambda self: dict(self.__dict__,
                        statistics_methods={"min": getattr(HistoryBuffer, "min")}), raising=False)
    buf = HistoryBuffer()
    buf.update(2.0)
    torch.save({"state_dict": {"backbone.w": torch.ones(1)}, "meta": {"message_hub": {"loss": buf}}},
               tmp_path / "det.pth")
    monkeypatch.undo()
    out = mm_load(str(tmp_path / "det.pth"))
    assert torch.equal(out["state_dict"]["backbone.w"], torch.ones(1))
    assert out["meta"]["message_hub"]["loss"].current() == 2.0

    class _GetattrOther:
        def __reduce__(self):
            return (getattr, (argparse.ArgumentParser, "parse_args"))
    torch.save({"x": _GetattrOther()}, tmp_path / "bad.pth")
    with pytest.raises(UnsafeCheckpointError):
        mm_load(str(tmp_path / "bad.pth"))
