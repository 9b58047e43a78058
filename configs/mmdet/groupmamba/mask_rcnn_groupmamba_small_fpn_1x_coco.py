# Mask R-CNN FPN 1x on COCO with GroupMamba-S. There is no official GroupMamba detection config: these are our
# values, VMamba's Mask R-CNN recipe for the same size (drop_path_rate 0.3, AdamW lr 1e-4, wd 0.05, 12 epochs, 8
# GPUs x 2 images). The official GroupMamba-S classification checkpoint has no direct URL (official README: Google
# Drive, or https://huggingface.co/Abdelrahman-shaker/GroupMamba-Small): save it as ckpts/groupmamba_small.pth or
# pass --cfg-options model.backbone.init_cfg.checkpoint=PATH. Its class block and classifiers are not used.
_base_ = '../_base_/mask_rcnn_vssm_fpn_1x_coco.py'
backbone = dict(arch='groupmamba_small', drop_path_rate=0.3,
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/groupmamba_small.pth'))
model = dict(backbone=backbone, neck=dict(in_channels=[64, 128, 348, 512]))
