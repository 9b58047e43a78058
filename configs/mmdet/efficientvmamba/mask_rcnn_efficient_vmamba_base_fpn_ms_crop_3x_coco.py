# Mask R-CNN FPN 3x on COCO with EfficientVMamba-B (official values, from TerryPei/EfficientVMamba
# detection/configs/efficient/mask_rcnn_vssm_fpn_coco_efficient_2292_96.py and the mmdet Swin-T config it inherits:
# drop_path_rate 0.2, AdamW lr 1e-4, wd 0.05, total batch 16 (official: 4 GPUs x 4 images; here 8 x 2), multi-scale
# + random-crop training, 36 epochs, lr x0.1 at epochs 27 and 33; the official run uses mixed precision, here
# optional). Checkpoint path as in the official config; the file is efficient_vmamba_base.ckpt from
# https://huggingface.co/TerryPei/EfficientVMamba-Base (or pass --cfg-options
# model.backbone.init_cfg.checkpoint=PATH).
_base_ = '../_base_/mask_rcnn_vssm_fpn_ms_crop_3x_coco.py'
backbone = dict(arch='efficient_vmamba_base', drop_path_rate=0.2,
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/efficient_vmamba_base.ckpt'))
model = dict(backbone=backbone, neck=dict(in_channels=[96, 192, 384, 768]))
