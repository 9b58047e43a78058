# Mask R-CNN FPN 1x on COCO with VMamba-S (official VMamba detection recipe: drop_path_rate 0.3, AdamW lr 1e-4,
# wd 0.05, 12 epochs, 8 GPUs x 2 images), ImageNet-1k pretrained backbone.
_base_ = [
    '../_base_/models/mask_rcnn_vssm_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime.py',
]
pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_small_0229_ckpt_epoch_222.pth'
model = dict(
    backbone=dict(arch='vmamba_small', drop_path_rate=0.3, init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
