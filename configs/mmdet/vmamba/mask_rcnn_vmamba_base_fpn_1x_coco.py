# Mask R-CNN FPN 1x on COCO with VMamba-B (official VMamba detection recipe: drop_path_rate 0.6, AdamW lr 1e-4,
# wd 0.05, 12 epochs, 8 GPUs x 2 images), ImageNet-1k pretrained backbone.
_base_ = [
    '../_base_/models/mask_rcnn_vssm_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime.py',
]
pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'
model = dict(
    backbone=dict(arch='vmamba_base', drop_path_rate=0.6, init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
