# UperNet 160k on ADE20K 512x512 with GroupMamba-B. There is no official GroupMamba segmentation config: these are
# our values, VMamba's UperNet recipe for the same size (drop_path_rate 0.6, AdamW lr 6e-5, wd 0.01, 8 GPUs x 2
# images). The official GroupMamba-B classification checkpoint has no direct URL (official README: Google Drive, or
# https://huggingface.co/Abdelrahman-shaker/GroupMamba-Base): save it as ckpts/groupmamba_base.pth or pass
# --cfg-options model.backbone.init_cfg.checkpoint=PATH. Its class block and classifiers are not used.
_base_ = '../_base_/upernet_vssm_160k_ade20k_512x512.py'
backbone = dict(arch='groupmamba_base', drop_path_rate=0.6,
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/groupmamba_base.pth'))
model = dict(backbone=backbone, decode_head=dict(in_channels=[96, 192, 424, 512]),
             auxiliary_head=dict(in_channels=424))
