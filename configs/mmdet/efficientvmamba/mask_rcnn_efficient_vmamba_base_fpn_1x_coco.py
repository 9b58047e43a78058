# Mask R-CNN FPN 1x on COCO with EfficientVMamba-B: single-scale, 12 epochs, lr x0.1 at epochs 8 and 11. Not an
# official config (the official release has a 3x config for B only): the official B values (drop_path_rate 0.2,
# AdamW lr 1e-4, wd 0.05, total batch 16) on the 1x schedule of the T and S configs.
_base_ = '../_base_/mask_rcnn_vssm_fpn_1x_coco.py'
backbone = dict(arch='efficient_vmamba_base', drop_path_rate=0.2,
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/efficient_vmamba_base.ckpt'))
model = dict(backbone=backbone, neck=dict(in_channels=[96, 192, 384, 768]))
