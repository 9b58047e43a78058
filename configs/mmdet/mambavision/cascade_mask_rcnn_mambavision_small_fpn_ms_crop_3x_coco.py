# Cascade Mask R-CNN 3x on COCO with MambaVision-S: the official recipe, as the tiny config (drop_path_rate: see
# there).
_base_ = './cascade_mask_rcnn_mambavision_tiny_fpn_ms_crop_3x_coco.py'
pretrained = 'https://huggingface.co/nvidia/MambaVision-S-1K/resolve/main/mambavision_small_1k.pth.tar'
backbone = dict(arch='mambavision_small', drop_path_rate=0.2, model_kwargs=dict(window_size=(8, 8, 112, 56)),
                init_cfg=dict(type='Pretrained', checkpoint=pretrained))
model = dict(backbone=backbone, neck=dict(in_channels=[96, 192, 384, 768]))
