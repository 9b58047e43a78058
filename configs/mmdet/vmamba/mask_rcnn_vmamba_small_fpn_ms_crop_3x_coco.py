# Mask R-CNN FPN 3x on COCO with VMamba-S: multi-scale + random-crop training, 36 epochs, otherwise as
# mask_rcnn_vmamba_small_fpn_1x_coco.py.
_base_ = [
    '../_base_/models/mask_rcnn_vssm_fpn.py',
    '../_base_/datasets/coco_instance_ms_crop.py',
    '../_base_/schedules/schedule_3x.py',
    '../_base_/default_runtime.py',
]
pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_small_0229_ckpt_epoch_222.pth'
model = dict(
    backbone=dict(arch='vmamba_small', drop_path_rate=0.3, init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))
