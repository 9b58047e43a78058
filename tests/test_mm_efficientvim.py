"""EfficientViM (timm's own ``efficientvim_*``) as a vssm citizen: official-format checkpoints load through timm and
give the official outputs (tests/data/efficientvim_official_micro.pt, made with the official code: see its
``note``), VSSMBackbone serves the three stride-16 / 32 / 64 maps, the official detection neck EfficientViTFPN
reproduces the official neck, and the official-recipe configs (RetinaNet 1x, Mask R-CNN 1x on COCO, Semantic FPN
40k on ADE20K, M4) build and run loss + predict.

The OpenMMLab parts are skipped cleanly without mmengine / mmcv / mmdet / mmsegmentation.
"""
from __future__ import annotations

import os
import re

import pytest
import timm
import torch

import vssm  # noqa: F401  (the safe-loading allowlist for official files)
from _helpers import REFERENCE, n_params, read_key_file, synthetic_official_checkpoint

torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO = os.path.join(REPO, "tests", "data", "efficientvim_official_micro.pt")
DET = {"retinanet": "configs/mmdet/efficientvim/retinanet_efficientvim_m4_fpn_1x_coco.py",
       "mask_rcnn": "configs/mmdet/efficientvim/mask_rcnn_efficientvim_m4_fpn_1x_coco.py"}
SEG = "configs/mmseg/efficientvim/fpn_efficientvim_m4_8xb4-40k_ade20k-512x512.py"
# a small EfficientViM for the loss / predict tests (same code paths as M4, three stages)
_SMALL = dict(embed_dim=(16, 24, 32), depths=(1, 1, 1), state_dim=(4, 4, 4))


@pytest.fixture(scope="module")
def micro():
    return torch.load(MICRO, weights_only=True)


def _micro_model(micro, tmp_path, **kwargs):
    """The micro checkpoint written as the official training code writes it, loaded through timm."""
    path = tmp_path / "EfficientViM_micro.pth"
    torch.save(dict(micro["checkpoint"], epoch=449, max_accuracy=0.0), path)
    cfg = micro["config"]
    # the overlay says the file holds a 10-class classifier (timm drops classifiers of another width)
    overlay = dict(file=str(path), num_classes=micro["config"]["num_classes"])
    return timm.create_model("efficientvim_m1", pretrained=True, pretrained_cfg_overlay=overlay,
                             embed_dim=cfg["embed_dim"], depths=cfg["depths"], state_dim=cfg["state_dim"],
                             num_classes=cfg["num_classes"], **kwargs).eval()


# ---- official checkpoints through timm -------------------------------------------------------------------------

def test_official_micro_checkpoint_gives_official_outputs(micro, tmp_path):
    model = _micro_model(micro, tmp_path)
    with torch.no_grad():
        logits = model(micro["x"])
        maps = model.forward_intermediates(micro["x_nonsquare"], intermediates_only=True)
    torch.testing.assert_close(logits, micro["logits"], atol=1e-5, rtol=0)
    assert logits.std() > 0.05  # the perturbed weights give distinct logits, not a constant
    assert [tuple(m.shape[2:]) for m in maps] == [(4, 6), (2, 3), (1, 2)]
    for ours, ref in zip(maps, micro["maps"]):  # non-square: the official detection backbone's stage maps
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def _official_param_count(official_name):
    with open(os.path.join(REFERENCE, f"{official_name}.state_dict_keys.txt")) as f:
        return int(re.search(r"(\d+) parameters", f.readline()).group(1))


@pytest.mark.parametrize("official_name", ["EfficientViM_M1", "EfficientViM_M3", "EfficientViM_M4",
                                           "EfficientViM_M4_dist"])
def test_full_size_official_layout_loads_strictly(official_name, tmp_path):
    """Every official key and shape (shared/reference key lists) loads through timm's own filter, strictly, with
    the official parameter count."""
    ckpt = synthetic_official_checkpoint(official_name)
    path = tmp_path / f"{official_name}.pth"
    torch.save(ckpt, path)
    name = official_name.lower()
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert n_params(model) == _official_param_count(official_name)
    own = model.state_dict()
    assert set(own) == set(read_key_file(official_name))
    for k, v in ckpt["model"].items():
        assert torch.equal(own[k], v.reshape(own[k].shape)), k


# ---- OpenMMLab ---------------------------------------------------------------------------------------------------

def _mm():
    pytest.importorskip("mmengine")
    pytest.importorskip("mmcv")
    import vssm.mm  # noqa: F401
    return vssm.mm


def test_backbone_serves_timm_efficientvim():
    mm = _mm()
    b = mm.VSSMBackbone("efficientvim_m4", out_indices=(0, 1, 2), out_norm=False)
    assert b.channels == [224, 320, 512] and b.strides == [16, 32, 64]
    assert "efficientvim_m4_dist" in mm.list_archs()
    with pytest.raises(ValueError, match=r"out of range for efficientvim_m4 with 3 stages \(valid: 0..2\)"):
        mm.VSSMBackbone("efficientvim_m4")  # the default (0, 1, 2, 3) of the 4-stage families
    # the maps are timm's features_only maps of the same weights
    b = mm.VSSMBackbone("efficientvim_m1", out_indices=(0, 1, 2), out_norm=False, model_kwargs=_SMALL).eval()
    feat = timm.create_model("efficientvim_m1", features_only=True, **_SMALL).eval()
    own = b.model.state_dict()
    feat.load_state_dict({k: own[k[len("model."):]] for k in feat.state_dict()}, strict=True)  # timm's getter wrapper
    x = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        outs, ref = b(x), feat(x)
    assert [tuple(o.shape) for o in outs] == [(1, 16, 5, 7), (1, 24, 3, 4), (1, 32, 2, 2)]
    for o, r in zip(outs, ref):
        torch.testing.assert_close(o, r, atol=0, rtol=0)


def test_backbone_norm_eval_and_freezing():
    mm = _mm()
    bns = lambda b: [m for m in b.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]  # noqa
    b = mm.VSSMBackbone("efficientvim_m1", out_indices=(0, 1, 2), model_kwargs=_SMALL, norm_eval=True).train()
    assert bns(b) and not any(m.training for m in bns(b)) and b.model.stages[0].blocks[0].training
    stats = [m.running_mean.clone() for m in bns(b)]
    b(torch.randn(2, 3, 64, 64)).__len__()
    assert all(torch.equal(s, m.running_mean) for s, m in zip(stats, bns(b)))  # statistics frozen
    assert all(m.weight.requires_grad for m in bns(b))  # affine still trained
    b = mm.VSSMBackbone("efficientvim_m1", out_indices=(0, 1, 2), model_kwargs=_SMALL).train()
    assert all(m.training for m in bns(b))
    b = mm.VSSMBackbone("efficientvim_m1", out_indices=(0, 1, 2), model_kwargs=_SMALL, frozen_stages=1).train()
    assert not any(p.requires_grad for p in b.model.patch_embed.parameters())
    assert not any(p.requires_grad for p in b.model.stages[0].parameters())
    assert all(p.requires_grad for p in b.model.stages[1].parameters())


def test_backbone_loads_official_checkpoints(micro, tmp_path):
    """init_cfg with an official classification file (its 'model' entry, as the official dense backbones load)."""
    mm = _mm()
    path = tmp_path / "EfficientViM_micro.pth"
    torch.save(micro["checkpoint"], path)
    cfg = {k: micro["config"][k] for k in ("embed_dim", "depths", "state_dim")}
    b = mm.VSSMBackbone("efficientvim_m1", out_indices=(0, 1, 2), out_norm=False, model_kwargs=cfg,
                        init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    b.init_weights()
    b.eval()
    with torch.no_grad():
        outs = b(micro["x_nonsquare"])
    for o, r in zip(outs, micro["maps"]):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5)
    # full size: the official M4 layout, no backbone key missing
    ckpt = synthetic_official_checkpoint("EfficientViM_M4")
    path = tmp_path / "EfficientViM_M4_e450.pth"
    torch.save(ckpt, path)
    b = mm.VSSMBackbone("efficientvim_m4", out_indices=(0, 1, 2), out_norm=False)
    assert mm.load_backbone_checkpoint(b, str(path)) == {"missing": []}
    key = "stages.1.blocks.3.mixer.hz_proj.conv.weight"
    torch.testing.assert_close(b.model.state_dict()[key], ckpt["model"][key])
    del ckpt["model"][key]
    torch.save(ckpt, path)
    with pytest.raises(vssm.CheckpointMismatchError, match=re.escape(key)):
        mm.load_backbone_checkpoint(mm.VSSMBackbone("efficientvim_m4", out_indices=(0, 1, 2)), str(path))


@pytest.mark.parametrize("setting", ["retinanet", "mask_rcnn"])
def test_neck_reproduces_official_neck(micro, setting):
    mm = _mm()
    ref = micro["neck"][setting]
    neck = mm.EfficientViTFPN(**ref["kwargs"]).eval()
    neck.load_state_dict(ref["state_dict"], strict=True)  # official names; (1, C, 1, 1) pre-norm parameters
    with torch.no_grad():
        outs = neck(micro["neck_inputs"])
    assert len(outs) == 5
    for o, r in zip(outs, ref["outputs"]):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5)


def test_neck_bad_arguments():
    mm = _mm()
    with pytest.raises(ValueError, match="num_outs 3 < 3 used input levels \\+ 2 transposed-conv levels"):
        mm.EfficientViTFPN([8, 16, 32], 8, num_outs=3, num_extra_trans_convs=2)
    with pytest.raises(ValueError, match="add_extra_convs"):
        mm.EfficientViTFPN([8, 16, 32], 8, num_outs=5, add_extra_convs="on_nothing")
    neck = mm.EfficientViTFPN([8, 16, 32], 8, num_outs=4)  # no transposed convs: a plain FPN with max-pool level
    outs = neck([torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4), torch.randn(1, 32, 2, 2)])
    assert [tuple(o.shape[2:]) for o in outs] == [(8, 8), (4, 4), (2, 2), (1, 1)]
    with pytest.raises(ValueError, match="expected 3 input maps, got 2"):
        neck([torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4)])


def _check(path, scope):
    _mm()
    pytest.importorskip(scope)
    from test_mm import _check_config
    return _check_config(os.path.join(REPO, path), scope)


def _backbone_official(b):
    assert b.arch == "efficientvim_m4" and tuple(b.out_indices) == (0, 1, 2) and b.frozen_stages == -1
    assert b.out_norm is False and b.norm_eval is True and b.drop_path_rate == 0.0
    assert b.init_cfg == dict(type="Pretrained", checkpoint="ckpts/EfficientViM_M4_e450.pth")


@pytest.mark.parametrize("task", sorted(DET))
def test_det_config_official_values(task):
    cfg, channels = _check(DET[task], "mmdet")
    _backbone_official(cfg.model.backbone)
    n = cfg.model.neck
    assert n.type == "EfficientViTFPN" and n.in_channels == channels == [224, 320, 512] and n.pre_norm is True
    assert n.out_channels == 256 and n.num_outs == 5 and n.start_level == 0
    if task == "retinanet":
        assert cfg.model.type == "RetinaNet" and n.num_extra_trans_convs == 1 and n.add_extra_convs == "on_input"
        assert cfg.model.bbox_head.anchor_generator.strides == [8, 16, 32, 64, 128]
        assert cfg.val_evaluator.metric == "bbox"
    else:
        assert cfg.model.type == "MaskRCNN" and n.num_extra_trans_convs == 2 and not n.get("add_extra_convs")
        assert cfg.model.rpn_head.anchor_generator.strides == [4, 8, 16, 32, 64]
        assert cfg.val_evaluator.metric == ["bbox", "segm"]
    ow = cfg.optim_wrapper
    assert ow.type == "OptimWrapper" and "constructor" not in ow and "paramwise_cfg" not in ow
    assert ow.optimizer == dict(type="AdamW", lr=0.0002, betas=(0.9, 0.999), weight_decay=0.05)
    warm, step = cfg.param_scheduler
    assert (warm.type, warm.start_factor, warm.end, warm.by_epoch) == ("LinearLR", 0.001, 500, False)
    assert step.type == "MultiStepLR" and step.milestones == [8, 11] and cfg.train_cfg.max_epochs == 12
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16


def test_seg_config_official_values():
    cfg, channels = _check(SEG, "mmseg")
    _backbone_official(cfg.model.backbone)
    assert cfg.model.neck.type == "FPN" and cfg.model.neck.in_channels == channels == [224, 320, 512]
    assert cfg.model.neck.num_outs == 4 and "auxiliary_head" not in cfg.model
    h = cfg.model.decode_head
    assert h.type == "FPNHead" and h.feature_strides == [4, 8, 16, 32] and h.channels == 128 and h.num_classes == 150
    ow = cfg.optim_wrapper
    assert ow.optimizer == dict(type="AdamW", lr=0.0002, betas=(0.9, 0.999), weight_decay=0.0001)
    (poly,) = cfg.param_scheduler
    assert (poly.type, poly.power, poly.eta_min, poly.end) == ("PolyLR", 0.9, 1e-6, 40000)
    assert cfg.train_cfg.max_iters == 40000 and cfg.train_dataloader.batch_size == 4
    assert cfg.model.data_preprocessor.size == (512, 512)


def _small_det(task):
    from mmengine.config import Config
    from test_mm import _build
    cfg = Config.fromfile(os.path.join(REPO, DET[task]))
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.model_kwargs = dict(_SMALL)
    cfg.model.neck.in_channels = list(_SMALL["embed_dim"])
    if task == "mask_rcnn":  # 64 RoIs, 50 proposals at test time (not 512 / 1000): same code, less CPU time
        cfg.model.train_cfg.rcnn.sampler.num = 64
        cfg.model.test_cfg.rpn.max_per_img = 50
    model = _build(cfg.model, "mmdet")
    model.init_weights()
    return model


@pytest.mark.parametrize("task", sorted(DET))
def test_det_loss_and_predict(task):
    _mm()
    pytest.importorskip("mmdet")
    from test_mm import _det_sample
    model = _small_det(task)
    img, sample = _det_sample(128, 160)
    model.train()
    bns = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # norm_eval, as the official backbone
    data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), True)
    feats = model.extract_feat(data["inputs"])
    strides = [128 // f.shape[2] for f in feats]
    assert strides == ([8, 16, 32, 64, 128] if task == "retinanet" else [4, 8, 16, 32, 64])
    losses = model(**data, mode="loss")
    want = {"loss_cls", "loss_bbox"} if task == "retinanet" else {"loss_rpn_cls", "loss_cls", "loss_mask"}
    assert want <= set(losses), sorted(losses)
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(x.sum() for x in v) for k, v in losses.items()
                if "loss" in k)
    assert torch.isfinite(total)
    total.backward()
    trainable = [(n, p) for n, p in model.backbone.named_parameters() if p.requires_grad]
    assert any(n.endswith("mixer.A") for n, _ in trainable)
    assert not [n for n, p in trainable if p.grad is None]
    assert all(p.grad is not None for p in model.neck.parameters())
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(dict(inputs=[img], data_samples=[sample]), False)
        (pred,) = model(**data, mode="predict")
    inst = pred.pred_instances
    assert inst.bboxes.shape[1] == 4 and len(inst.scores) == len(inst.labels) <= 100
    if task == "mask_rcnn":
        assert len(inst.masks) == len(inst.scores)


def test_seg_loss_and_predict():
    _mm()
    pytest.importorskip("mmseg")
    from mmengine.config import Config
    from test_mm import _build, check_seg_loss_and_predict
    cfg = Config.fromfile(os.path.join(REPO, SEG))
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.model_kwargs = dict(_SMALL)
    cfg.model.neck.in_channels = list(_SMALL["embed_dim"])
    h, w = 96, 128
    cfg.model.data_preprocessor.size = (h, w)
    check_seg_loss_and_predict(_build(cfg.model, "mmseg"), h, w, ("decode.loss_ce",))
