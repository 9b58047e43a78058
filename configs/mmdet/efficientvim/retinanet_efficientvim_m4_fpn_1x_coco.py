# RetinaNet 1x on COCO with EfficientViM-M4, the official recipe (mlvlab/EfficientViM
# detection/configs/retinanet_efficientvim_fpn_1x_coco.py; published: 38.8 box AP). Neck: the official
# EfficientViTFPN (vssm.mm.efficientvit_fpn) with channel LayerNorms on the inputs, one transposed conv for the
# stride-8 level and a stride-2 conv on the last (normalised) input for stride 128: strides 8 / 16 / 32 / 64 / 128.
# Backbone and optimisation: ../_base_/efficientvim_m4_1x_coco.py.
_base_ = [
    '../_base_/models/retinanet_vssm_fpn.py',
    '../_base_/datasets/coco_detection.py',
    '../_base_/efficientvim_m4_1x_coco.py',
]
model = dict(
    backbone={{_base_.backbone}},
    neck=dict(
        _delete_=True,
        type='EfficientViTFPN',
        in_channels=[224, 320, 512],
        out_channels=256,
        start_level=0,
        add_extra_convs='on_input',
        num_outs=5,
        num_extra_trans_convs=1,
        pre_norm=True))
