# UperNet 160k on ADE20K 512x512 with VSSD-Micro: OUR config. The official README reports a VSSD-Micro
# UperNet result (45.6 mIoU) but ships no config; these are the official tiny/small values (Swin-T's UperNet
# 8xb2 160k recipe) with the official micro detection drop_path_rate 0.1.
# The classification checkpoint: https://huggingface.co/YuhengSSS/VSSD/blob/main/vssd_micro_best.pth,
# saved as ckpts/vssd_micro_best.pth
# (or --cfg-options model.backbone.init_cfg.checkpoint=PATH); its 'model' entry loads, as the official
# MM_VSSD does (Backbone_VMAMBA2.load_pretrained, key='model'). Final norm and classifier are not used.
_base_ = '../_base_/upernet_vssm_160k_ade20k_512x512.py'
backbone = dict(arch='vssd_micro', drop_path_rate=0.1,
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/vssd_micro_best.pth'))
model = dict(backbone=backbone, decode_head=dict(in_channels=[48, 96, 192, 384]),
             auxiliary_head=dict(in_channels=192))
