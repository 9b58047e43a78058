# Mask R-CNN FPN 1x on COCO with VMamba-T (official VMamba detection recipe: drop_path_rate 0.2, AdamW lr 1e-4,
# wd 0.05, 12 epochs, 8 GPUs x 2 images), ImageNet-1k pretrained backbone.
_base_ = '../_base_/mask_rcnn_vssm_fpn_1x_coco.py'
pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth'
backbone = dict(arch='vmamba_tiny', drop_path_rate=0.2, init_cfg=dict(type='Pretrained', checkpoint=pretrained))
model = dict(backbone=backbone, neck=dict(in_channels=[96, 192, 384, 768]))
