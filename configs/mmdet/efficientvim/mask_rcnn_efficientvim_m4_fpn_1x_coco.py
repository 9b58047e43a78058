# Mask R-CNN 1x on COCO with EfficientViM-M4, the official recipe (mlvlab/EfficientViM
# detection/configs/mask_rcnn_efficientvim_fpn_1x_coco.py; published: 39.7 box AP, 36.4 mask AP). Neck: the
# official EfficientViTFPN (vssm.mm.efficientvit_fpn) with channel LayerNorms on the inputs and two transposed
# convs for the stride-4 and stride-8 levels: strides 4 / 8 / 16 / 32 / 64 for the mmdet Mask R-CNN R50 heads.
# Backbone and optimisation: ../_base_/efficientvim_m4_1x_coco.py.
_base_ = [
    '../_base_/models/mask_rcnn_vssm_fpn.py',
    '../_base_/datasets/coco_instance.py',
    '../_base_/efficientvim_m4_1x_coco.py',
]
model = dict(
    backbone={{_base_.backbone}},
    neck=dict(
        _delete_=True,
        type='EfficientViTFPN',
        in_channels=[224, 320, 512],
        out_channels=256,
        num_outs=5,
        start_level=0,
        num_extra_trans_convs=2,
        pre_norm=True))
