# Mask R-CNN FPN 3x on COCO with EfficientVMamba-T: multi-scale + random-crop training, 36 epochs, lr x0.1 at
# epochs 27 and 33. Not an official config (the official release has a 3x config for B only): the official 3x
# schedule applied to mask_rcnn_efficient_vmamba_tiny_fpn_1x_coco.py.
_base_ = '../_base_/mask_rcnn_vssm_fpn_ms_crop_3x_coco.py'
backbone = dict(arch='efficient_vmamba_tiny', drop_path_rate=0.2,
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/efficient_vmamba_tiny.ckpt'))
model = dict(backbone=backbone, neck=dict(in_channels=[48, 96, 192, 384]))
