# Cascade Mask R-CNN 3x on COCO with MambaVision-B (layer scale 1e-5): the official recipe, as the tiny config but
# AdamW lr 2e-4 (drop_path_rate: see the tiny config).
_base_ = './cascade_mask_rcnn_mambavision_tiny_fpn_ms_crop_3x_coco.py'
pretrained = 'https://huggingface.co/nvidia/MambaVision-B-1K/resolve/main/mambavision_base_1k.pth.tar'
backbone = dict(arch='mambavision_base', drop_path_rate=0.2, model_kwargs=dict(window_size=(8, 8, 112, 56)),
                init_cfg=dict(type='Pretrained', checkpoint=pretrained))
model = dict(backbone=backbone, neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(optimizer=dict(lr=0.0002))
