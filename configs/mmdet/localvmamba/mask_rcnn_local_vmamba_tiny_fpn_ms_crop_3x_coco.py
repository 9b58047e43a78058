# Mask R-CNN FPN 3x on COCO with LocalVMamba-T: multi-scale + random-crop training, 36 epochs, lr x0.1 at epochs 27
# and 33 (official: detection/configs/local_mamba/mask_rcnn_local_vssm_tiny_fpn_coco_ms_3x.py), otherwise as
# mask_rcnn_local_vmamba_tiny_fpn_1x_coco.py.
_base_ = '../_base_/mask_rcnn_vssm_fpn_ms_crop_3x_coco.py'
pretrained = 'https://github.com/hunto/LocalMamba/releases/download/v1.0.0/local_vssm_tiny.ckpt'
backbone = dict(arch='local_vmamba_tiny', drop_path_rate=0.2, init_cfg=dict(type='Pretrained', checkpoint=pretrained))
model = dict(backbone=backbone, neck=dict(in_channels=[96, 192, 384, 768]))
