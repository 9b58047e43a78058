# Mask R-CNN FPN 1x on COCO with VSSD-Tiny: official values (YuHengsss/VSSD
# detection/configs/vssd/mask_rcnn_vssd_fpn_coco_tiny.py: Swin-T's mmdet 1x recipe, AdamW lr 1e-4, wd 0.05,
# 12 epochs, 8 GPUs x 2 images, drop_path_rate 0.2).
# The classification checkpoint: https://huggingface.co/YuhengSSS/VSSD/blob/main/vssd_tiny_best_ema.pth,
# saved as ckpts/vssd_tiny_best_ema.pth
# (or --cfg-options model.backbone.init_cfg.checkpoint=PATH); its 'model' entry loads, as the official
# MM_VSSD does (Backbone_VMAMBA2.load_pretrained, key='model'). Final norm and classifier are not used.
_base_ = '../_base_/mask_rcnn_vssm_fpn_1x_coco.py'
backbone = dict(arch='vssd_tiny', drop_path_rate=0.2,
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/vssd_tiny_best_ema.pth'))
model = dict(backbone=backbone, neck=dict(in_channels=[64, 128, 256, 512]))
