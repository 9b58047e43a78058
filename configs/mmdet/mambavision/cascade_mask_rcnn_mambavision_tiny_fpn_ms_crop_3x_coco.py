# Cascade Mask R-CNN 3x on COCO with MambaVision-T, the official recipe (NVlabs/MambaVision object_detection
# configs, mmdet 3.3.0): 4conv1fc bbox heads with SyncBN and GIoU loss, multi-scale + random-crop training,
# 36 epochs (lr x0.1 after 27 and 33), AdamW lr 1e-4, wd 0.05 (none on norms), total batch 16; the official
# runs use AMP (add --amp to train.py), the config keeps the plain OptimWrapper so that it also runs on CPU.
# Backbone windows 112 / 56 in stages 3-4 (the official detection values). drop_path_rate 0.2: the official
# configs write 0.2 / 0.3 / 0.5 (T / S / B), but the official detection backbone does not pass the value on, so
# every released detector trained with its default 0.2.
_base_ = '../_base_/cascade_mask_rcnn_vssm_fpn_ms_crop_3x_coco.py'
pretrained = 'https://huggingface.co/nvidia/MambaVision-T-1K/resolve/main/mambavision_tiny_1k.pth.tar'
backbone = dict(arch='mambavision_tiny', drop_path_rate=0.2, model_kwargs=dict(window_size=(8, 8, 112, 56)),
                init_cfg=dict(type='Pretrained', checkpoint=pretrained))
model = dict(
    backbone=backbone,
    neck=dict(in_channels=[80, 160, 320, 640]),
    roi_head=dict(bbox_head=[
        dict(
            type='ConvFCBBoxHead',
            num_shared_convs=4,
            num_shared_fcs=1,
            in_channels=256,
            conv_out_channels=256,
            fc_out_channels=1024,
            roi_feat_size=7,
            num_classes=80,
            bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=stds),
            reg_class_agnostic=False,
            reg_decoded_bbox=True,
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
            loss_bbox=dict(type='GIoULoss', loss_weight=10.0))
        for stds in ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
    ]))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
