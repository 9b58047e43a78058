# Mask R-CNN FPN 1x on COCO with VMamba-B (official VMamba detection recipe: drop_path_rate 0.6, AdamW lr 1e-4,
# wd 0.05, 12 epochs, 8 GPUs x 2 images), ImageNet-1k pretrained backbone.
_base_ = '../_base_/mask_rcnn_vssm_fpn_1x_coco.py'
pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'
backbone = dict(arch='vmamba_base', drop_path_rate=0.6, init_cfg=dict(type='Pretrained', checkpoint=pretrained))
model = dict(backbone=backbone, neck=dict(in_channels=[128, 256, 512, 1024]))
