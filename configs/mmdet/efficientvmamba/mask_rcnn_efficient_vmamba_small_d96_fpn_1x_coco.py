# Mask R-CNN FPN 1x on COCO with EfficientVMamba-S (official values, from TerryPei/EfficientVMamba
# detection/configs/efficient/mask_rcnn_vssm_fpn_coco_efficient_2242_96.py and the mmdet Swin-T 1x config it
# inherits: drop_path_rate 0.2, AdamW lr 1e-4, wd 0.05, 8 GPUs x 2 images, 12 epochs; the official run uses mixed
# precision, here optional, see configs/mmdet/README.md). The official small detection config builds the dims-96
# model (arch efficient_vmamba_small_d96). If the released efficient_vmamba_small.ckpt turns out to be the paper's
# dims-64 model, use arch='efficient_vmamba_small' with neck in_channels [64, 128, 256, 512] instead. Checkpoint
# path as in the official config; the file is efficient_vmamba_small.ckpt from
# https://huggingface.co/TerryPei/EfficientVMamba-Small (or pass --cfg-options
# model.backbone.init_cfg.checkpoint=PATH).
_base_ = '../_base_/mask_rcnn_vssm_fpn_1x_coco.py'
backbone = dict(arch='efficient_vmamba_small_d96', drop_path_rate=0.2,
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/efficient_vmamba_small.ckpt'))
model = dict(backbone=backbone, neck=dict(in_channels=[96, 192, 384, 768]))
