# Mask R-CNN FPN 3x on COCO with VMamba-B: multi-scale + random-crop training, 36 epochs, otherwise as
# mask_rcnn_vmamba_base_fpn_1x_coco.py. (The official release has 3x configs for T and S only; this one
# applies the same 3x schedule to B's 1x settings.)
_base_ = '../_base_/mask_rcnn_vssm_fpn_ms_crop_3x_coco.py'
pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'
backbone = dict(arch='vmamba_base', drop_path_rate=0.6, init_cfg=dict(type='Pretrained', checkpoint=pretrained))
model = dict(backbone=backbone, neck=dict(in_channels=[128, 256, 512, 1024]))
