# Mask R-CNN FPN 1x on COCO with LocalVMamba-S (official LocalMamba values, from
# detection/configs/local_mamba/mask_rcnn_local_vssm_small_fpn_coco.py and the mmdet Swin-T 1x config it inherits:
# drop_path_rate 0.2, AdamW lr 1e-4, wd 0.05, 12 epochs, 8 GPUs x 2 images; the official run uses mixed precision,
# here optional, see configs/mmdet/README.md), ImageNet-1k pretrained backbone with the searched scan directions of
# the release model.
_base_ = '../_base_/mask_rcnn_vssm_fpn_1x_coco.py'
pretrained = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vssm_small.ckpt'
backbone = dict(arch='local_vmamba_small', drop_path_rate=0.2, init_cfg=dict(type='Pretrained', checkpoint=pretrained))
model = dict(backbone=backbone, neck=dict(in_channels=[96, 192, 384, 768]))
