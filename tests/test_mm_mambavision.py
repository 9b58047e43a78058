"""MambaVision in OpenMMLab (vssm.mm): the official-recipe configs (Cascade Mask R-CNN 3x COCO, UperNet 160k
ADE20K for T/S/B) build and run loss + predict, VSSMBackbone serves the models with their window sizes, and
official classification and dense (detection / segmentation) checkpoints load with zero missing backbone keys.

Skipped cleanly without mmengine / mmcv / mmdet / mmsegmentation (``tools/build_mmcv_wheel.sh`` installs them).
"""
from __future__ import annotations

import glob
import os

import pytest
import torch

pytest.importorskip("mmengine")

import vssm.mm  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402

from vssm import CheckpointMismatchError  # noqa: E402
from vssm.mm import VSSMBackbone, load_backbone_checkpoint  # noqa: E402

from _helpers import synthetic_official_state_dict  # noqa: E402
from test_mm import (_build, _check_config, _det_sample,  # noqa: E402  (the shared config / sample helpers)
                     check_seg_loss_and_predict)

torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET = sorted(glob.glob(os.path.join(REPO, "configs", "mmdet", "mambavision", "*.py")))
SEG = sorted(glob.glob(os.path.join(REPO, "configs", "mmseg", "mambavision", "*.py")))
_HF = "https://huggingface.co/nvidia/MambaVision-{}-1K/resolve/main/mambavision_{}_1k.pth.tar"
# official values per size: (arch, det window sizes, det lr, seg window sizes, seg lr, seg images per GPU)
OFFICIAL = {
    "tiny": ("T", (8, 8, 112, 56), 1e-4, (8, 8, 64, 32), 5e-5, 1),
    "small": ("S", (8, 8, 112, 56), 1e-4, (8, 8, 160, 56), 6e-5, 2),
    "base": ("B", (8, 8, 112, 56), 2e-4, (8, 8, 64, 32), 5e-5, 1),
}
# the loss / predict tests run a small MambaVision with small windows (the official 112 / 56 pad a small image to
# 112x112 / 56x56 token maps: slow on the CPU, same code)
_MICRO = dict(dim=8, in_dim=8, depths=(1, 1, 3, 2), num_heads=(1, 1, 2, 4), window_size=(8, 8, 4, 2))


def _size(path):
    return next(s for s in OFFICIAL if f"mambavision_{s}_" in os.path.basename(path))


def test_configs_cover_tsb():
    assert sorted(_size(p) for p in DET) == sorted(OFFICIAL) == sorted(_size(p) for p in SEG)


@pytest.mark.parametrize("path", DET, ids=os.path.basename)
def test_det_config_official_values(path):
    size = _size(path)
    letter, windows, lr, *_ = OFFICIAL[size]
    cfg, channels = _check_config(path, "mmdet")
    b = cfg.model.backbone
    assert b.arch == f"mambavision_{size}" and b.model_kwargs["window_size"] == windows
    assert b.drop_path_rate == 0.2 and b.init_cfg["checkpoint"] == _HF.format(letter, size)
    assert cfg.model.type == "CascadeRCNN" and cfg.model.neck.in_channels == channels
    heads = cfg.model.roi_head.bbox_head
    assert [h.type for h in heads] == ["ConvFCBBoxHead"] * 3 and all(h.loss_bbox.type == "GIoULoss" for h in heads)
    assert [h.bbox_coder.target_stds[0] for h in heads] == [0.1, 0.05, 0.033]
    assert cfg.train_cfg.max_epochs == 36
    assert [s for s in cfg.param_scheduler if s.type == "MultiStepLR"][0].milestones == [27, 33]
    assert any(t.type == "RandomChoice" for t in cfg.train_dataloader.dataset.pipeline)
    ow = cfg.optim_wrapper
    assert ow.type == "OptimWrapper" and "constructor" not in ow  # mmengine's default constructor, as official
    assert ow.optimizer.lr == lr and ow.optimizer.weight_decay == 0.05
    assert ow.paramwise_cfg.custom_keys == {"norm": {"decay_mult": 0.0}}
    assert cfg.train_dataloader.batch_size == 2


@pytest.mark.parametrize("path", SEG, ids=os.path.basename)
def test_seg_config_official_values(path):
    size = _size(path)
    letter, _, _, windows, lr, per_gpu = OFFICIAL[size]
    cfg, channels = _check_config(path, "mmseg")
    b = cfg.model.backbone
    assert b.arch == f"mambavision_{size}" and b.model_kwargs["window_size"] == windows
    assert b.drop_path_rate == 0.2 and b.init_cfg["checkpoint"] == _HF.format(letter, size)
    assert cfg.model.decode_head.in_channels == channels and cfg.model.auxiliary_head.in_channels == channels[2]
    ow = cfg.optim_wrapper
    assert ow.type == "OptimWrapper" and "constructor" not in ow and ow.optimizer.lr == lr
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.01 and cfg.train_cfg.max_iters == 160000
    assert cfg.train_dataloader.batch_size == per_gpu and f"{16 // per_gpu}xb{per_gpu}-160k" in path
    assert cfg.model.data_preprocessor.size == (512, 512)


def test_backbone_window_sizes_and_outputs():
    b = VSSMBackbone("mambavision_tiny", model_kwargs=dict(window_size=(8, 8, 112, 56)))
    assert [s.window_size for s in b.model.stages] == [8, 8, 112, 56]
    assert b.channels == [80, 160, 320, 640] and b.strides == [4, 8, 16, 32]
    b = VSSMBackbone("mambavision_tiny", model_kwargs=_MICRO).eval()
    with torch.no_grad():
        outs = b(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, 8, 16, 24), (1, 16, 8, 12), (1, 32, 4, 6), (1, 64, 2, 3)]
    for o in outs:  # per-level LayerNorm over channels, as the official outnorm{i}
        torch.testing.assert_close(o.mean(1), torch.zeros_like(o.mean(1)), atol=1e-4, rtol=0)


def test_det_loss_and_predict():
    pytest.importorskip("mmdet")
    cfg = Config.fromfile(DET[[_size(p) for p in DET].index("tiny")])
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.model_kwargs = _MICRO
    cfg.model.neck.in_channels = [8, 16, 32, 64]
    for stage in cfg.model.train_cfg.rcnn:  # 32 RoIs per cascade stage, not 512: the 4conv1fc heads are costly
        stage.sampler.num = 32
    cfg.model.test_cfg.rpn.max_per_img = 50  # and 50 proposals at test time, not 1000
    model = _build(cfg.model, "mmdet")
    model.init_weights()
    img, sample = _det_sample(96, 128)
    model.train()
    data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), True)
    losses = model(**data, mode="loss")
    for stage in range(3):  # the three cascade stages
        assert {f"s{stage}.loss_cls", f"s{stage}.loss_bbox", f"s{stage}.loss_mask"} <= set(losses), sorted(losses)
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(x.sum() for x in v) for k, v in losses.items()
                if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    trainable = [(n, p) for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert any("mixer.A_log" in n for n, _ in trainable)
    assert not [n for n, p in trainable if p.grad is None]
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), False)
        (pred,) = model(**data, mode="predict")
    inst = pred.pred_instances
    assert inst.bboxes.shape[1] == 4 and len(inst.scores) == len(inst.labels) == len(inst.masks) <= 100


def test_seg_loss_and_predict():
    pytest.importorskip("mmseg")
    cfg = Config.fromfile(SEG[[_size(p) for p in SEG].index("tiny")])
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.model_kwargs = _MICRO
    cfg.model.decode_head.in_channels = [8, 16, 32, 64]
    cfg.model.auxiliary_head.in_channels = 32
    h, w = 96, 128
    cfg.model.data_preprocessor.size = (h, w)
    check_seg_loss_and_predict(_build(cfg.model, "mmseg"), h, w, ("decode.loss_ce", "aux.loss_ce"))


# ---- official checkpoints ----------------------------------------------------------------------------------

def test_official_classification_checkpoint(tmp_path):
    off = synthetic_official_state_dict("mamba_vision_T")
    path = tmp_path / "mambavision_tiny_1k.pth.tar"
    torch.save({"state_dict": off, "epoch": 309}, path)  # the released layout
    b = VSSMBackbone("mambavision_tiny", pretrained=str(path))
    b.init_weights()
    torch.testing.assert_close(b.model.stem.conv[0].weight, off["patch_embed.conv_down.0.weight"])
    torch.testing.assert_close(b.model.stages[3].blocks[2].mixer.qkv.weight, off["levels.3.blocks.2.mixer.qkv.weight"])
    torch.testing.assert_close(b.model.norm.running_var, off["norm.running_var"])


def test_official_dense_checkpoint_loads_without_missing_keys(tmp_path):
    """The official MM_mamba_vision checkpoints (mmdet / mmseg training files): backbone.* keys in the
    classification layout minus the final norm and head, plus per-level outnorm{i} LayerNorms."""
    off = synthetic_official_state_dict("mamba_vision_T")
    sd = {f"backbone.{k}": v for k, v in off.items() if not k.startswith(("norm.", "head."))}
    g = torch.Generator().manual_seed(1)
    for i, c in enumerate((80, 160, 320, 640)):
        sd[f"backbone.outnorm{i}.weight"] = torch.rand(c, generator=g) + 0.5
        sd[f"backbone.outnorm{i}.bias"] = torch.randn(c, generator=g)
    sd["neck.lateral_convs.0.conv.weight"] = torch.zeros(1)
    path = tmp_path / "cascade_mask_rcnn_mamba_vision_tiny_3x_coco.pth"
    torch.save({"meta": {"epoch": 36}, "state_dict": sd}, path)
    b = VSSMBackbone("mambavision_tiny")
    norm_before = {k: v.clone() for k, v in b.model.norm.state_dict().items()}
    assert load_backbone_checkpoint(b, str(path)) == {"missing": []}
    for i in range(4):
        torch.testing.assert_close(b.out_norms[str(i)].weight, sd[f"backbone.outnorm{i}.weight"])
        torch.testing.assert_close(b.out_norms[str(i)].bias, sd[f"backbone.outnorm{i}.bias"])
    torch.testing.assert_close(b.model.stages[2].blocks[0].mixer.A_log, sd["backbone.levels.2.blocks.0.mixer.A_log"])
    assert isinstance(b.model.norm, torch.nn.BatchNorm2d)  # the head-only final norm is back, with its init
    for k, v in b.model.norm.state_dict().items():
        assert torch.equal(v, norm_before[k])
    # a backbone key missing from the file is named
    del sd["backbone.levels.1.blocks.0.conv1.weight"]
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointMismatchError, match=r"stages\.1\.blocks\.0\.conv1\.weight"):
        load_backbone_checkpoint(VSSMBackbone("mambavision_tiny"), str(path))
