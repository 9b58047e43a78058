# Mask R-CNN FPN 3x on COCO with GroupMamba-S: multi-scale + random-crop training, 36 epochs, otherwise as
# mask_rcnn_groupmamba_small_fpn_1x_coco.py (our values, VMamba's recipe; no official GroupMamba detection config).
_base_ = '../_base_/mask_rcnn_vssm_fpn_ms_crop_3x_coco.py'
backbone = dict(arch='groupmamba_small', drop_path_rate=0.3,
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/groupmamba_small.pth'))
model = dict(backbone=backbone, neck=dict(in_channels=[64, 128, 348, 512]))
