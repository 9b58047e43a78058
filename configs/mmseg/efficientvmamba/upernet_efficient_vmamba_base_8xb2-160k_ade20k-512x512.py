# UperNet 160k on ADE20K 512x512 with EfficientVMamba-B. There is no official EfficientVMamba segmentation config:
# these are our values, VMamba's UperNet recipe (AdamW lr 6e-5, wd 0.01, total batch 16) with EfficientVMamba's own
# drop_path_rate 0.2 (its classification and detection value). Checkpoint path as in the official detection
# configs; the file is efficient_vmamba_base.ckpt from https://huggingface.co/TerryPei/EfficientVMamba-Base (or
# pass --cfg-options model.backbone.init_cfg.checkpoint=PATH).
_base_ = '../_base_/upernet_vssm_160k_ade20k_512x512.py'
backbone = dict(arch='efficient_vmamba_base', drop_path_rate=0.2,
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/efficient_vmamba_base.ckpt'))
model = dict(backbone=backbone, decode_head=dict(in_channels=[96, 192, 384, 768]),
             auxiliary_head=dict(in_channels=384))
