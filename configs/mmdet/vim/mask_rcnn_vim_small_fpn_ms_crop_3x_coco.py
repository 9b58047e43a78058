# Mask R-CNN FPN 3x on COCO with Vim-S: multi-scale + random-crop training, 36 epochs, otherwise as
# mask_rcnn_vim_small_fpn_1x_coco.py (our values; no official Vim Mask R-CNN config).
_base_ = '../_base_/mask_rcnn_vssm_fpn_ms_crop_3x_coco.py'
backbone = dict(arch='vim_small', out_indices=(5, 11, 17, 23), pyramid=True, drop_path_rate=0.1,
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/vim_s_midclstok_80p5acc.pth'))
model = dict(backbone=backbone, neck=dict(in_channels=[384] * 4))
