# UperNet 160k on ADE20K 512x512 with VMamba-T (official VMamba segmentation recipe: drop_path_rate 0.2,
# AdamW lr 6e-5, wd 0.01, total batch 16), ImageNet-1k pretrained backbone.
_base_ = '../_base_/upernet_vssm_160k_ade20k_512x512.py'
pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm1_tiny_0230s_ckpt_epoch_264.pth'
backbone = dict(arch='vmamba_tiny', drop_path_rate=0.2, init_cfg=dict(type='Pretrained', checkpoint=pretrained))
model = dict(backbone=backbone, decode_head=dict(in_channels=[96, 192, 384, 768]),
             auxiliary_head=dict(in_channels=384))
