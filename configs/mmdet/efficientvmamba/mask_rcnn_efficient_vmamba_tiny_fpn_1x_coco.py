# Mask R-CNN FPN 1x on COCO with EfficientVMamba-T (official values, from TerryPei/EfficientVMamba
# detection/configs/efficient/mask_rcnn_vssm_fpn_coco_efficient_2242_48.py and the mmdet Swin-T 1x config it
# inherits: drop_path_rate 0.2, AdamW lr 1e-4, wd 0.05, total batch 16 (official: 4 GPUs x 4 images; here 8 x 2),
# 12 epochs; the official run uses mixed precision, here optional, see configs/mmdet/README.md). Deviation: the
# official tiny detection config builds depths 2-2-9-2, which does not match the released tiny classification
# checkpoint (2-2-4-2) it loads; this config uses the checkpoint's architecture. Checkpoint path as in the official
# config; the file is efficient_vmamba_tiny.ckpt from https://huggingface.co/TerryPei/EfficientVMamba-Tiny (or pass
# --cfg-options model.backbone.init_cfg.checkpoint=PATH).
_base_ = '../_base_/mask_rcnn_vssm_fpn_1x_coco.py'
backbone = dict(arch='efficient_vmamba_tiny', drop_path_rate=0.2,
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/efficient_vmamba_tiny.ckpt'))
model = dict(backbone=backbone, neck=dict(in_channels=[48, 96, 192, 384]))
