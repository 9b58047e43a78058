# Mask R-CNN FPN 1x on COCO with Vim-S. There is no official Vim Mask R-CNN config: these are our values, the
# VMamba Mask R-CNN recipe (AdamW lr 1e-4, wd 0.05, 12 epochs, 8 GPUs x 2 images) on the layers and pyramid of the
# official Vim segmentation backbone (layers 5 / 11 / 17 / 23, BEiT-style deconvs / identity / max-pool to strides
# 4 / 8 / 16 / 32), drop_path_rate 0.1; the position embedding is resampled to each input's grid. The checkpoint is
# the classification release (its 'model' weights; Hugging Face hustvl/Vim-small-midclstok): save it as
# ckpts/vim_s_midclstok_80p5acc.pth or pass --cfg-options model.backbone.init_cfg.checkpoint=PATH.
_base_ = '../_base_/mask_rcnn_vssm_fpn_1x_coco.py'
backbone = dict(arch='vim_small', out_indices=(5, 11, 17, 23), pyramid=True, drop_path_rate=0.1,
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/vim_s_midclstok_80p5acc.pth'))
model = dict(backbone=backbone, neck=dict(in_channels=[384] * 4))
