"""OpenMMLab adapters (vssm.mm): every mmdet / mmseg config builds, loss + predict with real targets, a real
mmengine Runner (through mmdet's / mmseg's own tools/train.py) with checkpoint save and resume on tiny
self-written COCO / ADE20K datasets, checkpoint loading, the optimizer constructor, and config errors.

Needs mmengine, mmcv (with ops), mmdet and mmsegmentation: ``tools/build_mmcv_wheel.sh`` installs them.
Skipped cleanly when they are absent.
"""
from __future__ import annotations

import glob
import json
import os
import runpy
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("mmengine")

import vssm.mm  # noqa: E402, F401  (applies the compat fixes, registers the adapter)
from mmengine.config import Config  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402

from vssm import CheckpointMismatchError  # noqa: E402
from vssm.mm import VSSMBackbone, VSSMOptimWrapperConstructor, list_archs, load_backbone_checkpoint  # noqa: E402

from _helpers import synthetic_official_checkpoint, synthetic_official_state_dict  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET_CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "mmdet", "**", "*.py"), recursive=True)
                     if f"{os.sep}_base_{os.sep}" not in p)
SEG_CONFIGS = sorted(p for p in glob.glob(os.path.join(REPO, "configs", "mmseg", "**", "*.py"), recursive=True)
                     if f"{os.sep}_base_{os.sep}" not in p)
# MambaVision's configs follow its own official recipe (Cascade Mask R-CNN, AMP, mmengine's default optimizer
# constructor): tests/test_mm_mambavision.py checks them
DET_CONFIGS = [p for p in DET_CONFIGS if os.path.relpath(p, REPO).split(os.sep)[2] != "mambavision"]
SEG_CONFIGS = [p for p in SEG_CONFIGS if os.path.relpath(p, REPO).split(os.sep)[2] != "mambavision"]
# EfficientViM's (timm's model, its own neck and recipes): tests/test_mm_efficientvim.py checks them
DET_CONFIGS = [p for p in DET_CONFIGS if os.path.relpath(p, REPO).split(os.sep)[2] != "efficientvim"]
SEG_CONFIGS = [p for p in SEG_CONFIGS if os.path.relpath(p, REPO).split(os.sep)[2] != "efficientvim"]
# one config per family for the loss / predict tests (the smallest variant); the Runner tests use VMamba's
FAMILY_DET = {
    "vmamba": "configs/mmdet/vmamba/mask_rcnn_vmamba_tiny_fpn_1x_coco.py",
    "localvmamba": "configs/mmdet/localvmamba/mask_rcnn_local_vmamba_tiny_fpn_1x_coco.py",
    "efficientvmamba": "configs/mmdet/efficientvmamba/mask_rcnn_efficient_vmamba_tiny_fpn_1x_coco.py",
    "groupmamba": "configs/mmdet/groupmamba/mask_rcnn_groupmamba_tiny_fpn_1x_coco.py",
    "vim": "configs/mmdet/vim/mask_rcnn_vim_small_fpn_1x_coco.py",
    "vssd": "configs/mmdet/vssd/mask_rcnn_vssd_micro_fpn_1x_coco.py",
}
FAMILY_SEG = {
    "vmamba": "configs/mmseg/vmamba/upernet_vmamba_tiny_8xb2-160k_ade20k-512x512.py",
    "localvmamba": "configs/mmseg/localvmamba/upernet_local_vmamba_tiny_8xb2-160k_ade20k-512x512.py",
    "efficientvmamba": "configs/mmseg/efficientvmamba/upernet_efficient_vmamba_tiny_8xb2-160k_ade20k-512x512.py",
    "groupmamba": "configs/mmseg/groupmamba/upernet_groupmamba_tiny_8xb2-160k_ade20k-512x512.py",
    "vim": "configs/mmseg/vim/upernet_vim_tiny_8xb4-160k_ade20k-512x512.py",
    "vssd": "configs/mmseg/vssd/upernet_vssd_micro_8xb2-160k_ade20k-512x512.py",
}
# segmentation recipes other than VMamba's (lr, weight decay, images per GPU): Vim's ported from its official config
SEG_RECIPE = {"vim_tiny": (1e-4, 0.05, 4), "vim_small": (1e-4, 0.05, 4)}


def _rel(path):
    return os.path.relpath(path, REPO)


def _need(pkg):
    return pytest.importorskip(pkg)


def _build(cfg_model, scope):
    init_default_scope(scope)
    registry = __import__(f"{scope}.registry", fromlist=["MODELS"]).MODELS
    from mmengine.model import revert_sync_batchnorm
    return revert_sync_batchnorm(registry.build(cfg_model))


# ---- configs -----------------------------------------------------------------------------------------

_built = {}  # identical model configs (1x / 3x) are built once


def _check_config(path, scope):
    _need("mmcv")
    _need(scope)
    cfg = Config.fromfile(path)
    assert cfg.default_scope == scope
    assert "vssm.mm" in cfg.custom_imports["imports"]
    b = cfg.model.backbone
    assert b.type == "VSSMBackbone" and b.arch in list_archs()
    assert b.init_cfg["type"] == "Pretrained" and b.init_cfg["checkpoint"].endswith((".pth", ".ckpt", ".pth.tar"))
    # every pipeline names registered transforms
    from mmcv.transforms import Compose
    init_default_scope(scope)
    for key in ("train_pipeline", "test_pipeline"):
        Compose(cfg[key])
    Compose(cfg.train_dataloader.dataset.pipeline)
    key = repr(cfg.model)
    if key not in _built:
        model = _build(cfg.model, scope)
        n_params = sum(p.numel() for p in model.parameters())
        _built[key] = (list(model.backbone.channels), n_params)
        del model
    return cfg, _built[key][0]


@pytest.mark.parametrize("path", DET_CONFIGS, ids=_rel)
def test_det_config_builds(path):
    cfg, channels = _check_config(path, "mmdet")
    assert cfg.model.neck.in_channels == channels
    assert cfg.optim_wrapper.constructor == "VSSMOptimWrapperConstructor"
    assert cfg.train_dataloader.batch_size == 2 and cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.optim_wrapper.optimizer.lr == 1e-4 and cfg.optim_wrapper.optimizer.weight_decay == 0.05
    assert cfg.train_cfg.max_epochs == (36 if "3x" in path else 12)


@pytest.mark.parametrize("path", SEG_CONFIGS, ids=_rel)
def test_seg_config_builds(path):
    cfg, channels = _check_config(path, "mmseg")
    assert cfg.model.decode_head.in_channels == channels
    assert cfg.model.auxiliary_head.in_channels == channels[cfg.model.auxiliary_head.in_index]
    lr = SEG_RECIPE.get(cfg.model.backbone.arch, (6e-5,))[0]
    assert cfg.optim_wrapper.optimizer.lr == lr and cfg.train_cfg.max_iters == 160000


_LM = "https://github.com/hunto/LocalMamba/releases/download/v1.0.0/"
# (task, arch) -> (drop_path_rate, checkpoint). Official values: VMamba (MzeroMiko/VMamba), LocalVMamba
# (hunto/LocalMamba detection/configs/local_mamba, segmentation/configs/local_mamba), EfficientVMamba detection
# (TerryPei/EfficientVMamba detection/configs/efficient). Ours (no official config): EfficientVMamba segmentation
# (its own drop_path_rate 0.2) and GroupMamba (VMamba's per-size values); see configs/mmdet/README.md.
OFFICIAL = {
    **{(task, f"vmamba_{s}"): (dpr, ckpt) for task in ("det", "seg") for s, dpr, ckpt in (
        ("tiny", 0.2, "vssm1_tiny_0230s_ckpt_epoch_264.pth"), ("small", 0.3, "vssm_small_0229_ckpt_epoch_222.pth"),
        ("base", 0.6, "vssm_base_0229_ckpt_epoch_237.pth"))},
    ("det", "local_vmamba_tiny"): (0.2, _LM + "local_vssm_tiny.ckpt"),
    ("det", "local_vmamba_small"): (0.2, _LM + "local_vssm_small.ckpt"),
    ("seg", "local_vmamba_tiny"): (0.1, _LM + "local_vssm_tiny.ckpt"),
    ("seg", "local_vmamba_small"): (0.2, _LM + "local_vssm_small.ckpt"),
    **{(task, arch): (0.2, f"ckpts/efficient_vmamba_{s}.ckpt") for task in ("det", "seg") for arch, s in (
        ("efficient_vmamba_tiny", "tiny"), ("efficient_vmamba_small_d96", "small"), ("efficient_vmamba_base", "base"))},
    **{(task, f"groupmamba_{s}"): (dpr, f"ckpts/groupmamba_{s}.pth") for task in ("det", "seg")
       for s, dpr in (("tiny", 0.2), ("small", 0.3), ("base", 0.6))},
    ("det", "vim_small"): (0.1, "ckpts/vim_s_midclstok_80p5acc.pth"),
    ("seg", "vim_tiny"): (0.1, "ckpts/vim_t_midclstok_76p1acc.pth"),
    ("seg", "vim_small"): (0.1, "ckpts/vim_s_midclstok_80p5acc.pth"),
    **{(task, f"vssd_{s}"): (dpr, f"ckpts/vssd_{s}_best{ema}.pth") for task in ("det", "seg")
       for s, dpr, ema in (("micro", 0.1, ""), ("tiny", 0.2, "_ema"), ("small", 0.4, "_ema"))},
}


def test_official_values():
    """Every config's backbone, drop_path_rate, checkpoint and schedule as in the official configs (or, where a
    family has none, the documented recipe), and every (task, backbone) pair has its configs."""
    seen = set()
    for task, paths in (("det", DET_CONFIGS), ("seg", SEG_CONFIGS)):
        for path in paths:
            cfg = Config.fromfile(path)
            b = cfg.model.backbone
            assert (task, b.arch) in OFFICIAL, path
            dpr, ckpt = OFFICIAL[task, b.arch]
            assert b.drop_path_rate == dpr, path
            assert b.init_cfg["checkpoint"].endswith(ckpt), path
            assert os.path.basename(path).startswith({"det": "mask_rcnn_", "seg": "upernet_"}[task] + b.arch + "_")
            if task == "det":
                milestones = [s for s in cfg.param_scheduler if s.type == "MultiStepLR"][0].milestones
                assert milestones == ([27, 33] if "3x" in path else [8, 11]), path
                ms = any(t.type == "RandomChoice" for t in cfg.train_dataloader.dataset.pipeline)
                assert ms == ("ms_crop" in path), path
                seen.add((task, b.arch, "3x" if "3x" in path else "1x"))
            else:
                _, wd, batch = SEG_RECIPE.get(b.arch, (None, 0.01, 2))
                assert cfg.optim_wrapper.optimizer.weight_decay == wd and cfg.train_dataloader.batch_size == batch
                assert cfg.model.data_preprocessor.size == (512, 512), path
                seen.add((task, b.arch, "160k"))
    want = {(t, a, s) for t, a in OFFICIAL for s in ({"det": ("1x", "3x"), "seg": ("160k",)}[t])}
    assert seen == want, sorted(want ^ seen)


# ---- loss + predict on one image with real targets ---------------------------------------------------

# image size of the loss / predict tests; LocalVMamba's window scans are several times slower on the CPU than the
# other families' scans (its backward at 128x160 takes ~25 s on 2 cores), so it gets a smaller image
_IMG_SIZE = {"localvmamba": (64, 96), "vim": (64, 96)}
# backbone overrides of the loss / predict tests: Vim's 24 layers cut to 4 (the four outputs and the pyramid kept)
_BACKBONE_OVERRIDES = {"vim": dict(out_indices=(0, 1, 2, 3), model_kwargs=dict(depth=4))}


def _det_sample(h=128, w=160):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    y0, x0, y1, x1 = h // 4, w // 4, h * 7 // 10, w * 3 // 4
    img = torch.full((3, h, w), 40, dtype=torch.uint8)
    img[:, y0:y1, x0:x1] = 200  # a bright box ...
    mask = np.zeros((1, h, w), np.uint8)
    mask[0, y0:y1, x0:x1] = 1
    sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0)))
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32),
                                       labels=torch.tensor([3]), masks=BitmapMasks(mask, h, w))
    return img, sample


@pytest.mark.parametrize("family", sorted(FAMILY_DET))
def test_det_loss_and_predict(family):
    _need("mmdet")
    cfg = Config.fromfile(os.path.join(REPO, FAMILY_DET[family]))
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.update(_BACKBONE_OVERRIDES.get(family, {}))
    model = _build(cfg.model, "mmdet")
    model.init_weights()
    h, w = _IMG_SIZE.get(family, (128, 160))
    img, sample = _det_sample(h, w)
    model.train()
    data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), True)
    losses = model(**data, mode="loss")
    for name in ("loss_rpn_cls", "loss_cls", "loss_bbox", "loss_mask"):
        assert name in losses, sorted(losses)
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(x.sum() for x in v) for k, v in losses.items()
                if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    # every trainable backbone parameter gets a gradient (what DDP's unused-parameter check needs), the frozen
    # head-only modules (final norm, GroupMamba's class-token block) none
    trainable = [(n, p) for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert any(("stages.0" in n or "layers.0" in n) for n, _ in trainable)
    assert not [n for n, p in trainable if p.grad is None]

    model.eval()
    img, sample = _det_sample(h, w)
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), False)
        (pred,) = model(**data, mode="predict")
    inst = pred.pred_instances
    assert inst.bboxes.shape[1] == 4 and len(inst.scores) == len(inst.labels) == len(inst.masks)
    assert len(inst) <= 100
    if len(inst):
        assert tuple(inst.masks.shape[1:]) == (h, w)


def check_seg_loss_and_predict(model, h, w, loss_keys, ignore_rows=False):
    """A segmentor built from a config, on ``h x w`` images: a training batch of 2 (an image and its mirror; half
    the map class 5, optionally its bottom rows ignored) gives finite ``loss_keys`` whose backward reaches every
    trainable backbone parameter; predict gives a ``(1, h, w)`` map and 150-class logits."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    img = torch.randint(0, 255, (3, h, w), dtype=torch.uint8)
    seg = torch.zeros(1, h, w, dtype=torch.long)
    seg[:, :, w // 2:] = 5
    if ignore_rows:
        seg[:, h * 25 // 32:, :] = 255

    def sample():
        s = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        s.gt_sem_seg = PixelData(data=seg.clone())
        return s

    model.train()  # batch of 2: a pooled (1x1) PPM branch has BatchNorm
    data = model.data_preprocessor(dict(inputs=[img, img.flip(-1)], data_samples=[sample(), sample()]), True)
    losses = model(**data, mode="loss")
    assert set(loss_keys) <= set(losses)
    total = sum(losses[k] for k in loss_keys)
    assert torch.isfinite(total)
    total.backward()
    assert not [n for n, p in model.backbone.named_parameters() if p.requires_grad and p.grad is None]

    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample()]), False)
        (pred,) = model(**data, mode="predict")
    assert tuple(pred.pred_sem_seg.data.shape) == (1, h, w)
    assert tuple(pred.seg_logits.data.shape) == (150, h, w)


@pytest.mark.parametrize("family", sorted(FAMILY_SEG))
def test_seg_loss_and_predict(family):
    _need("mmseg")
    cfg = Config.fromfile(os.path.join(REPO, FAMILY_SEG[family]))
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.update(_BACKBONE_OVERRIDES.get(family, {}))
    h, w = _IMG_SIZE.get(family, (128, 160))
    cfg.model.data_preprocessor.size = (h, w)
    check_seg_loss_and_predict(_build(cfg.model, "mmseg"), h, w, ("decode.loss_ce", "aux.loss_ce"),
                               ignore_rows=True)


# ---- backbone: outputs, freezing, checkpointing, checkpoint files ------------------------------------

@pytest.fixture(scope="module")
def nano_backbone():
    torch.manual_seed(0)
    return VSSMBackbone("vmamba_nano", out_indices=(0, 1, 2, 3))


def test_backbone_outputs(nano_backbone):
    b = nano_backbone.eval()
    outs = b(torch.randn(2, 3, 96, 128))
    assert [tuple(o.shape) for o in outs] == [(2, 24, 24, 32), (2, 48, 12, 16), (2, 96, 6, 8), (2, 192, 3, 4)]
    assert all(o.is_contiguous() for o in outs)
    assert b.strides == [4, 8, 16, 32]
    # per-stage output norms: each map is layer-normed over channels
    for o in outs:
        torch.testing.assert_close(o.mean(1), torch.zeros_like(o.mean(1)), atol=1e-4, rtol=0)
    sub = VSSMBackbone("vmamba_nano", out_indices=(1, 3))
    assert [o.shape[1] for o in sub(torch.randn(1, 3, 64, 64))] == [48, 192]
    assert set(sub.out_norms) == {"1", "3"}


def test_frozen_stages_and_grad_checkpointing():
    torch.manual_seed(0)
    b = VSSMBackbone("vmamba_nano", frozen_stages=2)
    b.train()
    frozen = [n for n, p in b.named_parameters() if not p.requires_grad]
    assert any(n.startswith("model.stem.") for n in frozen)
    assert any(n.startswith("model.stages.1.") for n in frozen) and any(n.startswith("out_norms.1.") for n in frozen)
    assert not any(n.startswith("model.stages.2.") for n in frozen)
    assert not b.model.stages[1].training and b.model.stages[2].training
    cp = VSSMBackbone("vmamba_nano", with_cp=True)
    cp.load_state_dict(b.state_dict())
    x = torch.randn(1, 3, 64, 64)
    b.eval(), cp.eval()
    for o1, o2 in zip(b(x), cp(x)):
        torch.testing.assert_close(o1, o2)
    cp.train()
    sum(o.sum() for o in cp(x)).backward()
    assert cp.model.stages[0].blocks[0].mixer.A_logs.grad is not None


def test_init_cfg_official_checkpoint(tmp_path):
    ckpt = synthetic_official_checkpoint("vmamba_tiny_s1l8")
    path = tmp_path / "vssm1_tiny_0230s_ckpt_epoch_264.pth"
    torch.save(ckpt, path)
    b = VSSMBackbone("vmamba_tiny", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    b.init_weights()
    off = ckpt["model"]
    torch.testing.assert_close(b.model.stem.conv1.weight, off["patch_embed.0.weight"])
    torch.testing.assert_close(b.model.stages[2].blocks[3].mixer.A_logs, off["layers.2.blocks.3.op.A_logs"])
    torch.testing.assert_close(b.model.stages[1].downsample.conv.weight, off["layers.0.downsample.1.weight"])

    # missing keys name themselves
    del off["layers.2.blocks.3.op.A_logs"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys .*stages\.2\.blocks\.3\.mixer\.A_logs"):
        load_backbone_checkpoint(b, str(path))


def test_vssd_official_dense_checkpoint_loads_out_norms(tmp_path):
    """An official VSSD detection checkpoint (Backbone_VMAMBA2 under backbone.: no final norm / classifier, an
    outnorm{i} per stage) loads with no backbone key missing, its outnorm{i} into out_norms.{i}."""
    off = {k: v for k, v in synthetic_official_state_dict("vssd_micro").items() if not k.startswith(("norm.", "head."))}
    off.update({f"outnorm{i}.{p}": torch.randn(48 * 2 ** i) for i in range(4) for p in ("weight", "bias")})
    path = tmp_path / "mask_rcnn_vssd_fpn_coco_micro.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in off.items()}, "meta": {}}, path)
    b = VSSMBackbone("vssd_micro")
    assert load_backbone_checkpoint(b, str(path)) == {"missing": []}
    torch.testing.assert_close(b.out_norms["2"].bias, off["outnorm2.bias"])
    torch.testing.assert_close(b.model.stages[3].blocks[0].mixer.qkv.weight,
                               off["layers.3.blocks.0.attn.to_qkv.weight"])
    outs = b(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 48, 16, 16), (1, 96, 8, 8), (1, 192, 4, 4), (1, 384, 2, 2)]


def test_groupmamba_class_block_unused_and_official_checkpoint(tmp_path):
    """GroupMamba's class-token block, final norm and classifiers are head-only: frozen in the backbone (so DDP needs
    no find_unused_parameters), and an official GroupMamba checkpoint (which holds them) loads."""
    off = synthetic_official_state_dict("groupmamba_tiny")
    path = tmp_path / "groupmamba_tiny.pth"
    torch.save(off, path)  # the release file is a bare state dict
    b = VSSMBackbone("groupmamba_tiny", pretrained=str(path))
    b.init_weights()
    torch.testing.assert_close(b.model.stem.conv[0].weight, off["patch_embed1.conv.0.weight"])
    torch.testing.assert_close(b.model.cls_block.norm1.weight, off["post_network.0.norm1.weight"])
    torch.testing.assert_close(b.model.norm.weight, off["norm4.weight"])
    frozen = {n for n, p in b.model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("cls_block.", "norm.", "head.")) for n in frozen)
    assert any(n.startswith("cls_block.") for n in frozen)
    # every parameter left trainable gets a gradient: nothing for DDP to find unused
    b.train()
    sum(o.float().mean() for o in b(torch.randn(2, 3, 32, 32))).backward()
    no_grad = [n for n, p in b.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad[:5]
    # and the adapter's own checkpoint (what a detector checkpoint holds under backbone.) loads back
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in b.state_dict().items()}}, tmp_path / "det.pth")
    b2 = VSSMBackbone("groupmamba_tiny", pretrained=str(tmp_path / "det.pth"))
    b2.init_weights()
    torch.testing.assert_close(b2.model.cls_block.norm1.weight, off["post_network.0.norm1.weight"])
    assert not any(p.requires_grad for p in b2.model.cls_block.parameters())


def test_init_cfg_from_detector_checkpoint(tmp_path, nano_backbone):
    """A detector checkpoint (state_dict with backbone.* keys) initialises the backbone, output norms included."""
    sd = {f"backbone.{k}": v + 1.0 for k, v in nano_backbone.state_dict().items()}
    sd["neck.lateral_convs.0.conv.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd, "meta": {"epoch": 12}}, tmp_path / "det.pth")
    b = VSSMBackbone("vmamba_nano", init_cfg=dict(type="Pretrained", checkpoint=str(tmp_path / "det.pth")))
    b.init_weights()
    for k, v in b.state_dict().items():
        torch.testing.assert_close(v, sd[f"backbone.{k}"])


@pytest.mark.parametrize("config,key_list", [
    ("configs/mmdet/vmamba/mask_rcnn_vmamba_tiny_fpn_1x_coco.py", "vmamba_tiny_s1l8"),
    ("configs/mmseg/vmamba/upernet_vmamba_tiny_8xb2-160k_ade20k-512x512.py", "vmamba_tiny_s1l8"),
    ("configs/mmdet/localvmamba/mask_rcnn_local_vmamba_tiny_fpn_1x_coco.py", "local_vssm_tiny"),
    ("configs/mmdet/efficientvmamba/mask_rcnn_efficient_vmamba_tiny_fpn_1x_coco.py", "efficient_vmamba_tiny"),
])  # the segmentation configs of LocalVMamba / EfficientVMamba build the same backbones as their detection ones
def test_official_detection_segmentation_checkpoint(tmp_path, config, key_list):
    """An official detector / segmentor checkpoint: its backbone (the official Backbone_* class) has no classifier
    and one norm per output (backbone.outnorm{i}); it loads through the shipped config's backbone with every
    backbone tensor from the file, output norms included."""
    cfg = Config.fromfile(os.path.join(REPO, config))
    args = {k: v for k, v in cfg.model.backbone.items() if k not in ("type", "init_cfg")}
    off = synthetic_official_state_dict(key_list)
    sd = {f"backbone.{k}": v for k, v in off.items() if not k.startswith("classifier.")}
    channels = cfg.model.neck.in_channels if "neck" in cfg.model else cfg.model.decode_head.in_channels
    g = torch.Generator().manual_seed(1)
    for i, c in enumerate(channels):
        sd[f"backbone.outnorm{i}.weight"] = torch.rand(c, generator=g) + 0.5
        sd[f"backbone.outnorm{i}.bias"] = torch.randn(c, generator=g)
    sd["neck.lateral_convs.0.conv.weight"] = torch.zeros(1)  # the rest of the detector is not the backbone's
    path = tmp_path / "official_det.pth"
    torch.save({"meta": {"epoch": 12, "mmdet_version": "3.3.0"}, "state_dict": sd}, path)
    b = VSSMBackbone(**args, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    assert load_backbone_checkpoint(b, str(path)) == {"missing": []}
    for i in range(len(channels)):
        torch.testing.assert_close(b.out_norms[str(i)].weight, sd[f"backbone.outnorm{i}.weight"])
        torch.testing.assert_close(b.out_norms[str(i)].bias, sd[f"backbone.outnorm{i}.bias"])
    stem = b.model.pretrained_cfg["first_conv"]
    torch.testing.assert_close(b.model.get_submodule(stem).weight, off["patch_embed.0.weight"])
    # every backbone tensor of the file is used: a stray one is named
    sd["backbone.layers.0.blocks.0.extra"] = torch.zeros(1)
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointMismatchError, match="unexpected keys.*extra"):
        load_backbone_checkpoint(b, str(path))


def test_checkpoint_with_yacs_config_loads_safely(tmp_path, monkeypatch):
    """Official VMamba files store a yacs config next to the weights: it loads under weights_only=True, without
    yacs, as an OrderedDict; a file with any other foreign class is refused, naming the opt-in variable."""
    from vssm import UnsafeCheckpointError
    from vssm.mm.compat import UNSAFE_LOAD_ENV, load_checkpoint_file
    mods = {name: type(sys)(name) for name in ("yacs", "yacs.config", "vssm_fake_pkg")}

    class CfgNode(dict):
        pass

    class Other(dict):
        pass
    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    Other.__module__, Other.__qualname__ = "vssm_fake_pkg", "Other"
    mods["yacs.config"].CfgNode, mods["vssm_fake_pkg"].Other = CfgNode, Other
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    torch.save({"model": {"w": torch.ones(2)}, "config": CfgNode(a=1)}, tmp_path / "off.pth")
    torch.save({"model": {"w": torch.ones(2)}, "config": Other(a=1)}, tmp_path / "other.pth")
    for name in mods:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delenv(UNSAFE_LOAD_ENV, raising=False)
    out = load_checkpoint_file(str(tmp_path / "off.pth"))
    assert torch.equal(out["model"]["w"], torch.ones(2)) and dict(out["config"]) == {"a": 1}
    with pytest.raises(UnsafeCheckpointError, match=rf"(?s)other\.pth.*vssm_fake_pkg\.Other.*{UNSAFE_LOAD_ENV}"):
        load_checkpoint_file(str(tmp_path / "other.pth"))


# ---- optimizer constructor ---------------------------------------------------------------------------

def test_optim_constructor_no_decay_and_layer_decay(nano_backbone):
    model = torch.nn.Module()
    model.backbone = nano_backbone
    model.neck = torch.nn.Conv2d(192, 8, 1)
    names = {id(p): n for n, p in model.named_parameters()}

    def groups(**paramwise):
        ctor = VSSMOptimWrapperConstructor(
            dict(optimizer=dict(type="AdamW", lr=1e-4, weight_decay=0.05)),
            dict(custom_keys={"norm": dict(decay_mult=0.0)}, **paramwise))
        return {names[id(g["params"][0])]: g for g in ctor(model).optimizer.param_groups}

    g = groups()
    for n, grp in g.items():
        no_decay = "norm" in n or n.endswith(("A_logs", "Ds", "dt_projs_bias"))
        assert grp["weight_decay"] == (0.0 if no_decay else 0.05), n
        assert grp["lr"] == 1e-4
    assert "backbone.model.norm.weight" not in g  # unused classifier norm: frozen, not optimised

    g = groups(layer_decay_rate=0.5, layer_decay_type="stage_wise")
    stem = g["backbone.model.stem.conv1.weight"]["lr"]
    s0 = g["backbone.model.stages.0.blocks.0.mixer.in_proj.weight"]["lr"]
    s3 = g["backbone.model.stages.3.blocks.0.mixer.in_proj.weight"]["lr"]
    assert stem < s0 < s3 < 1e-4
    assert g["neck.weight"]["lr"] == 1e-4 and g["backbone.out_norms.0.weight"]["lr"] == 1e-4
    with pytest.raises(ValueError, match="layer_decay_rate"):
        groups(layer_decay_rate=1.5)


# ---- config errors -----------------------------------------------------------------------------------

def test_bad_configs_fail_clearly(tmp_path):
    _need("mmdet")
    cfg = Config.fromfile(os.path.join(REPO, FAMILY_DET["vmamba"]))
    cfg.model.backbone.init_cfg = None
    bad = cfg.model.copy()
    bad.backbone = dict(cfg.model.backbone, arch="vmamba_huge")
    with pytest.raises(ValueError, match=r"unknown arch 'vmamba_huge'; available: .*vmamba_tiny"):
        _build(bad, "mmdet")
    bad.backbone = dict(cfg.model.backbone, arch="vmamba_nano", out_indices=(0, 1, 2, 4))
    with pytest.raises(ValueError, match=r"out_indices \(0, 1, 2, 4\) out of range .*\(valid: 0\.\.3\)"):
        _build(bad, "mmdet")
    bad.backbone = dict(cfg.model.backbone, arch="vmamba_nano", frozen_stages=9)
    with pytest.raises(ValueError, match="frozen_stages"):
        _build(bad, "mmdet")
    bad.backbone = dict(cfg.model.backbone, arch="vmamba_nano", model_kwargs=dict(num_classes=3))
    with pytest.raises(ValueError, match="num_classes"):
        _build(bad, "mmdet")
    # a checkpoint for another arch: names the missing keys
    torch.save({"model": VSSMBackbone("vmamba_nano", out_indices=(0,)).model.state_dict()}, tmp_path / "n.pth")
    b = VSSMBackbone("vmamba_nano", pretrained=str(tmp_path / "n.pth"), model_kwargs=dict(depths=(1, 1, 3, 1)))
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(\d+\): stages\.2\.blocks\.2\."):
        b.init_weights()


# ---- real Runner runs through mmdet's / mmseg's tools/train.py, with save and resume -----------------

def _tool(pkg, name):
    mod = __import__(pkg)
    path = os.path.join(os.path.dirname(mod.__file__), ".mim", "tools", name)
    if not os.path.exists(path):
        pytest.skip(f"{pkg} has no packaged {name}")
    return path


def _run_tool(path, *args):
    old = sys.argv
    sys.argv = [path, *args]
    try:
        runpy.run_path(path, run_name="__main__")
    finally:
        sys.argv = old


def _small_pipeline(cfg, key, scale, crop_size=None):
    """``cfg[key]`` (a pipeline of the shipped configs) resized for the tiny datasets: every ``scale`` becomes
    ``scale``, ``RandomResize`` keeps to 0.75..1.25 and ``RandomCrop`` crops ``crop_size``."""
    out = []
    for t in cfg.to_dict()[key]:
        if "scale" in t:
            t["scale"] = scale
        if t["type"] == "RandomResize":
            t["ratio_range"] = (0.75, 1.25)
        if t["type"] == "RandomCrop":
            t["crop_size"] = crop_size
        out.append(t)
    return out


def _write_coco(root, n=4, h=128, w=160):
    from PIL import Image
    os.makedirs(os.path.join(root, "images"))
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(n):
        img = np.full((h, w, 3), 30, np.uint8)
        x0, y0 = 10 + 8 * i, 12 + 5 * i
        img[y0:y0 + 50, x0:x0 + 60] = (220, 60, 60)  # a box (class 1)
        cy, cx, r = 90, 120 - 4 * i, 20
        yy, xx = np.mgrid[:h, :w]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (60, 60, 220)  # a disk (class 2)
        img = np.clip(img.astype(int) + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(root, "images", f"{i:03d}.jpg"))
        images.append(dict(id=i + 1, file_name=f"{i:03d}.jpg", height=h, width=w))
        box_poly = [x0, y0, x0 + 60, y0, x0 + 60, y0 + 50, x0, y0 + 50]
        ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        disk_poly = np.stack([cx + r * np.cos(ang), cy + r * np.sin(ang)], 1).ravel().round(1).tolist()
        anns.append(dict(id=2 * i + 1, image_id=i + 1, category_id=1, bbox=[x0, y0, 60, 50], area=3000.0,
                         segmentation=[box_poly], iscrowd=0))
        anns.append(dict(id=2 * i + 2, image_id=i + 1, category_id=2, bbox=[cx - r, cy - r, 2 * r, 2 * r],
                         area=float(np.pi * r * r), segmentation=[disk_poly], iscrowd=0))
    coco = dict(images=images, annotations=anns,
                categories=[dict(id=1, name="box"), dict(id=2, name="disk")])
    with open(os.path.join(root, "ann.json"), "w") as f:
        json.dump(coco, f)


def _read_logs(work):
    out = []
    for path in sorted(glob.glob(str(work / "*" / "*.log"))):
        with open(path) as f:
            out.append(f.read())
    return "".join(out)


def _ckpt_meta(path):
    # saved with vssm.mm imported: plain data only, so the safe loader takes it
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["meta"]


def test_mmdet_runner_train_save_resume(tmp_path):
    _need("mmdet")
    train_py = _tool("mmdet", "train.py")
    data = tmp_path / "coco"
    _write_coco(str(data))
    base = os.path.join(REPO, FAMILY_DET["vmamba"])
    base_cfg = Config.fromfile(base)
    cfg_path = tmp_path / "tiny_det.py"
    cfg_path.write_text(f"""
_base_ = [{base!r}]
data_root = {str(data) + '/'!r}
metainfo = dict(classes=('box', 'disk'))
model = dict(
    backbone=dict(arch='vmamba_nano', drop_path_rate=0.1, init_cfg=None),
    neck=dict(in_channels=[24, 48, 96, 192]),
    roi_head=dict(bbox_head=dict(num_classes=2), mask_head=dict(num_classes=2)),
    test_cfg=dict(rcnn=dict(score_thr=0.0)))  # an untrained model still yields detections to evaluate
randomness = dict(seed=0)
_pipe_train = {_small_pipeline(base_cfg, "train_pipeline", (160, 128))!r}
_pipe_test = {_small_pipeline(base_cfg, "test_pipeline", (160, 128))!r}
_ds = dict(type='CocoDataset', data_root=data_root, ann_file='ann.json', data_prefix=dict(img='images/'),
           metainfo=metainfo)
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(_ds, filter_cfg=dict(filter_empty_gt=True, min_size=8), pipeline=_pipe_train))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(_ds, test_mode=True, pipeline=_pipe_test))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'ann.json')
test_evaluator = val_evaluator
train_cfg = dict(max_epochs=1, val_interval=1)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)]
default_hooks = dict(logger=dict(interval=1), visualization=dict(draw=False))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
""")
    work = tmp_path / "work"
    _run_tool(train_py, str(cfg_path), "--work-dir", str(work), "--cfg-options", "experiment_name=det_a")
    assert os.path.exists(work / "epoch_1.pth")
    meta = _ckpt_meta(work / "epoch_1.pth")
    assert meta["epoch"] == 1 and meta["iter"] == 2 and meta["dataset_meta"]["classes"] == ("box", "disk")
    # resume: the second run continues from epoch 1 to epoch 2
    _run_tool(train_py, str(cfg_path), "--work-dir", str(work), "--resume",
              "--cfg-options", "experiment_name=det_b", "train_cfg.max_epochs=2")
    meta = _ckpt_meta(work / "epoch_2.pth")
    assert meta["epoch"] == 2 and meta["iter"] == 4
    logs = _read_logs(work)
    assert "resumed epoch: 1, iter: 2" in logs
    assert "coco/bbox_mAP" in logs and "coco/segm_mAP" in logs
    # and mmdet's own tools/test.py evaluates the checkpoint
    _run_tool(_tool("mmdet", "test.py"), str(cfg_path), str(work / "epoch_2.pth"), "--work-dir", str(work / "test"),
              "--cfg-options", "experiment_name=det_test")
    assert "coco/segm_mAP" in _read_logs(work / "test")


def _write_ade(root, n=4, h=128, w=160):
    from PIL import Image
    for split in ("training", "validation"):
        os.makedirs(os.path.join(root, "images", split))
        os.makedirs(os.path.join(root, "annotations", split))
        for i in range(n):
            seg = np.zeros((h, w), np.uint8)  # 0 = "other" (ignored with reduce_zero_label)
            seg[:, : w // 2] = 1 + i % 3
            seg[h // 2:, w // 2:] = 5
            img = np.stack([seg * 40, 255 - seg * 30, np.full_like(seg, 90)], -1).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(root, "images", split, f"ADE_{split}_{i:08d}.jpg"))
            Image.fromarray(seg).save(os.path.join(root, "annotations", split, f"ADE_{split}_{i:08d}.png"))


def test_mmseg_runner_train_save_resume(tmp_path):
    _need("mmseg")
    train_py = _tool("mmseg", "train.py")
    data = tmp_path / "ade"
    _write_ade(str(data))
    base = os.path.join(REPO, FAMILY_SEG["vmamba"])
    base_cfg = Config.fromfile(base)
    cfg_path = tmp_path / "tiny_seg.py"
    cfg_path.write_text(f"""
_base_ = [{base!r}]
data_root = {str(data)!r}
crop_size = (96, 96)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch='vmamba_nano', drop_path_rate=0.1, init_cfg=None),
    decode_head=dict(in_channels=[24, 48, 96, 192], channels=32),
    auxiliary_head=dict(in_channels=96, channels=16))
_pipe_train = {_small_pipeline(base_cfg, "train_pipeline", (160, 128), (96, 96))!r}
_pipe_test = {_small_pipeline(base_cfg, "test_pipeline", (160, 128))!r}
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=_pipe_train))
val_dataloader = dict(batch_size=1, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=_pipe_test))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=2, val_interval=2)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=2)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2), visualization=dict(draw=False))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
""")
    work = tmp_path / "work"
    _run_tool(train_py, str(cfg_path), "--work-dir", str(work), "--cfg-options", "experiment_name=seg_a")
    assert _ckpt_meta(work / "iter_2.pth")["iter"] == 2
    _run_tool(train_py, str(cfg_path), "--work-dir", str(work), "--resume",
              "--cfg-options", "experiment_name=seg_b", "train_cfg.max_iters=4")
    assert _ckpt_meta(work / "iter_4.pth")["iter"] == 4
    logs = _read_logs(work)
    assert "resumed epoch: 0, iter: 2" in logs
    assert "mIoU" in logs
    _run_tool(_tool("mmseg", "test.py"), str(cfg_path), str(work / "iter_4.pth"), "--work-dir", str(work / "test"),
              "--cfg-options", "experiment_name=seg_test")
    assert "mIoU" in _read_logs(work / "test")


# ---- plain families (Vim, Mamba-ND): layers as stages, the simple feature pyramid ------------------

_TINY_VIM = dict(embed_dim=32, depth=4)


def test_plain_backbone_pyramid():
    torch.manual_seed(0)
    b = VSSMBackbone("vim_tiny", out_indices=(0, 1, 2, 3), pyramid=True, model_kwargs=_TINY_VIM).eval()
    assert b.channels == [32] * 4 and b.strides == [4, 8, 16, 32]
    x = torch.randn(2, 3, 64, 96)
    outs = b(x)
    assert [tuple(o.shape) for o in outs] == [(2, 32, 16, 24), (2, 32, 8, 12), (2, 32, 4, 6), (2, 32, 2, 3)]
    # the stride-16 output is layer 2's normed token map; the stride-32 one the max-pooled layer-3 map
    maps = b.model.forward_intermediates(x, indices=[2, 3], intermediates_only=True)
    normed = [b.out_norms[str(i)](m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) for i, m in zip((2, 3), maps)]
    torch.testing.assert_close(outs[2], normed[0])
    torch.testing.assert_close(outs[3], torch.nn.functional.max_pool2d(normed[1], 2))
    # one layer: all four scales from it (ViTDet); Mamba-ND's maps are stride 16 after its patch merging
    nd = VSSMBackbone("mamba2d_small", out_indices=(3,), pyramid=True,
                      model_kwargs=dict(embed_dim=16, depth=4, downsample_layers=(1,)))
    assert [tuple(o.shape) for o in nd(torch.randn(1, 3, 64, 64))] == [(1, 16, 16, 16), (1, 16, 8, 8),
                                                                      (1, 16, 4, 4), (1, 16, 2, 2)]
    with pytest.raises(ValueError, match="pyramid"):
        VSSMBackbone("vmamba_nano", pyramid=True)
    with pytest.raises(ValueError, match="pyramid"):
        VSSMBackbone("vim_tiny", out_indices=(0, 1), pyramid=True, model_kwargs=_TINY_VIM)


def test_plain_backbone_freezing_and_checkpoint(tmp_path):
    import argparse
    import timm
    b = VSSMBackbone("vim_tiny", out_indices=(1, 3), frozen_stages=1, model_kwargs=_TINY_VIM)
    b.train()
    frozen = {n for n, p in b.named_parameters() if not p.requires_grad}
    assert {"model.pos_embed", "model.cls_token", "model.patch_embed.proj.weight"} <= frozen
    assert any(n.startswith("model.layers.0.") for n in frozen)
    assert not any(n.startswith("model.layers.1.") for n in frozen)
    assert "model.norm.weight" in frozen  # the classification-only final norm
    # an official Vim training file: its 'model' weights are loaded (not 'model_ema')
    src = timm.create_model("vim_tiny", **_TINY_VIM)
    sd = {("norm_f." + k[5:] if k.startswith("norm.") else k): v for k, v in src.state_dict().items()}
    path = tmp_path / "vim_t_official.pth"
    torch.save({"model": sd, "model_ema": {k: v + 1 for k, v in sd.items()}, "args": argparse.Namespace(lr=1)}, path)
    load_backbone_checkpoint(b, str(path))
    torch.testing.assert_close(b.model.layers[2].mixer.A_b_log, src.layers[2].mixer.A_b_log)


def test_plain_backbone_mamband_official_file(tmp_path):
    """An mmengine Mamba-ND checkpoint: the adapter strips 'backbone.', the family filter maps the rest."""
    torch.manual_seed(0)
    kwargs = dict(embed_dim=16, depth=4, downsample_layers=(1,))
    b = VSSMBackbone("mamba2d_small", out_indices=(0, 3), model_kwargs=kwargs)
    src = VSSMBackbone("mamba2d_small", out_indices=(0, 3), model_kwargs=kwargs).model
    rename = {"patch_embed.proj.": "patch_embed.projection.", "layers.1.downsample.": "layers.1.down_sample_layer.",
              "norm.": "ln1.", "fc_norm.": "ln2."}
    sd = {}
    for k, v in src.state_dict().items():
        if k.startswith("head."):
            continue
        if "downsample" in k:  # ours position-major -> official channel-major (unfold) features
            v = v.unflatten(-1, (4, 16)).transpose(-1, -2)[..., [0, 2, 1, 3]].flatten(-2)
        for a, o in rename.items():
            if k.startswith(a):
                k = o + k[len(a):]
        sd["backbone." + k] = v
    path = tmp_path / "mamba2d_official.pth"
    torch.save({"meta": {"epoch": 300}, "state_dict": sd}, path)
    load_backbone_checkpoint(b, str(path))
    for k, v in src.state_dict().items():
        if not k.startswith("head."):
            torch.testing.assert_close(b.model.state_dict()[k], v, msg=k)
