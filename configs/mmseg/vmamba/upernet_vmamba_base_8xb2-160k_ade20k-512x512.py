# UperNet 160k on ADE20K 512x512 with VMamba-B (official VMamba segmentation recipe: drop_path_rate 0.6,
# AdamW lr 6e-5, wd 0.01, total batch 16), ImageNet-1k pretrained backbone.
_base_ = '../_base_/upernet_vssm_160k_ade20k_512x512.py'
pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'
backbone = dict(arch='vmamba_base', drop_path_rate=0.6, init_cfg=dict(type='Pretrained', checkpoint=pretrained))
model = dict(backbone=backbone, decode_head=dict(in_channels=[128, 256, 512, 1024]),
             auxiliary_head=dict(in_channels=512))
