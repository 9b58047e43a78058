# UperNet 160k on ADE20K 512x512 with LocalVMamba-T (official LocalMamba values, from
# segmentation/configs/local_mamba/upernet_local_vssm_tiny_8xb2-160k_ade20k-512x512.py and the mmseg Swin-T UperNet
# config it inherits: drop_path_rate 0.1, AdamW lr 6e-5, wd 0.01, 8 GPUs x 2 images), ImageNet-1k pretrained
# backbone. The URL is the one the official config names; the official README lists local_vssm_tiny as still being
# retrained, so the file may not be published: pass a local copy with --cfg-options
# model.backbone.init_cfg.checkpoint=PATH.
_base_ = '../_base_/upernet_vssm_160k_ade20k_512x512.py'
pretrained = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vssm_tiny.ckpt'
backbone = dict(arch='local_vmamba_tiny', drop_path_rate=0.1, init_cfg=dict(type='Pretrained', checkpoint=pretrained))
model = dict(backbone=backbone, decode_head=dict(in_channels=[96, 192, 384, 768]),
             auxiliary_head=dict(in_channels=384))
