# Mask R-CNN FPN 1x on COCO with VSSD-Micro: official values (YuHengsss/VSSD
# detection/configs/vssd/mask_rcnn_vssd_fpn_coco_micro.py: Swin-T's mmdet 1x recipe, AdamW lr 1e-4, wd 0.05,
# 12 epochs, 8 GPUs x 2 images, drop_path_rate 0.1).
# The classification checkpoint: https://huggingface.co/YuhengSSS/VSSD/blob/main/vssd_micro_best.pth,
# saved as ckpts/vssd_micro_best.pth
# (or --cfg-options model.backbone.init_cfg.checkpoint=PATH); its 'model' entry loads, as the official
# MM_VSSD does (Backbone_VMAMBA2.load_pretrained, key='model'). Final norm and classifier are not used.
_base_ = '../_base_/mask_rcnn_vssm_fpn_1x_coco.py'
backbone = dict(arch='vssd_micro', drop_path_rate=0.1,
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/vssd_micro_best.pth'))
model = dict(backbone=backbone, neck=dict(in_channels=[48, 96, 192, 384]))
