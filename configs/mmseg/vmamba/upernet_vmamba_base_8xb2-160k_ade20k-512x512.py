# UperNet 160k on ADE20K 512x512 with VMamba-B (official VMamba segmentation recipe: drop_path_rate 0.6,
# AdamW lr 6e-5, wd 0.01, total batch 16), ImageNet-1k pretrained backbone.
_base_ = [
    '../_base_/models/upernet_vssm.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/schedules/schedule_160k.py',
    '../_base_/default_runtime.py',
]
crop_size = (512, 512)
pretrained = 'https://github.com/MzeroMiko/VMamba/releases/download/%23v2cls/vssm_base_0229_ckpt_epoch_237.pth'
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch='vmamba_base', drop_path_rate=0.6, init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
