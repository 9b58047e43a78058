# UperNet 160k on ADE20K 512x512 with GroupMamba-S. There is no official GroupMamba segmentation config: these are
# our values, VMamba's UperNet recipe for the same size (drop_path_rate 0.3, AdamW lr 6e-5, wd 0.01, 8 GPUs x 2
# images). The official GroupMamba-S classification checkpoint has no direct URL (official README: Google Drive, or
# https://huggingface.co/Abdelrahman-shaker/GroupMamba-Small): save it as ckpts/groupmamba_small.pth or pass
# --cfg-options model.backbone.init_cfg.checkpoint=PATH. Its class block and classifiers are not used.
_base_ = '../_base_/upernet_vssm_160k_ade20k_512x512.py'
backbone = dict(arch='groupmamba_small', drop_path_rate=0.3,
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/groupmamba_small.pth'))
model = dict(backbone=backbone, decode_head=dict(in_channels=[64, 128, 348, 512]),
             auxiliary_head=dict(in_channels=348))
