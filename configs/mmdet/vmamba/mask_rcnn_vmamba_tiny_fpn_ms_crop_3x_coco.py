# Mask R-CNN FPN 3x on COCO with VMamba-T: multi-scale + random-crop training, 36 epochs, otherwise as
# mask_rcnn_vmamba_tiny_fpn_1x_coco.py.
_base_ = '../_base_/mask_rcnn_vssm_fpn_ms_crop_3x_coco.py'
pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth'
backbone = dict(arch='vmamba_tiny', drop_path_rate=0.2, init_cfg=dict(type='Pretrained', checkpoint=pretrained))
model = dict(backbone=backbone, neck=dict(in_channels=[96, 192, 384, 768]))
