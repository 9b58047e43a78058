# Mask R-CNN FPN 3x (multi-scale + crop, 36 epochs) on COCO with VSSD-Small: OUR config. The official README
# reports a VSSD-Small 3x result (box 50.0 / mask 44.6) but ships no config; these are VMamba's 3x recipe
# with the official 1x VSSD-Small drop_path_rate 0.4.
# The classification checkpoint: https://huggingface.co/YuhengSSS/VSSD/blob/main/vssd_small_best_ema.pth,
# saved as ckpts/vssd_small_best_ema.pth
# (or --cfg-options model.backbone.init_cfg.checkpoint=PATH); its 'model' entry loads, as the official
# MM_VSSD does (Backbone_VMAMBA2.load_pretrained, key='model'). Final norm and classifier are not used.
_base_ = '../_base_/mask_rcnn_vssm_fpn_ms_crop_3x_coco.py'
backbone = dict(arch='vssd_small', drop_path_rate=0.4,
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/vssd_small_best_ema.pth'))
model = dict(backbone=backbone, neck=dict(in_channels=[64, 128, 256, 512]))
