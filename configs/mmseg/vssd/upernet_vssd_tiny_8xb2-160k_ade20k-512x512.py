# UperNet 160k on ADE20K 512x512 with VSSD-Tiny: official values (YuHengsss/VSSD
# segmentation/configs/vssd/upernet_vssd_4xb4-160k_ade20k-512x512_tiny.py: Swin-T's UperNet 8xb2 160k recipe,
# AdamW lr 6e-5, wd 0.01, drop_path_rate 0.2).
# The classification checkpoint: https://huggingface.co/YuhengSSS/VSSD/blob/main/vssd_tiny_best_ema.pth,
# saved as ckpts/vssd_tiny_best_ema.pth
# (or --cfg-options model.backbone.init_cfg.checkpoint=PATH); its 'model' entry loads, as the official
# MM_VSSD does (Backbone_VMAMBA2.load_pretrained, key='model'). Final norm and classifier are not used.
_base_ = '../_base_/upernet_vssm_160k_ade20k_512x512.py'
backbone = dict(arch='vssd_tiny', drop_path_rate=0.2,
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/vssd_tiny_best_ema.pth'))
model = dict(backbone=backbone, decode_head=dict(in_channels=[64, 128, 256, 512]),
             auxiliary_head=dict(in_channels=256))
