# Semantic FPN 40k on ADE20K with EfficientViM-M4, the official recipe (mlvlab/EfficientViM
# segmentation/configs/sem_fpn/fpn_efficientvim_m4_ade20k_40k.py and the config recorded in
# segmentation/logs/efficientViM_ade20k.json, mmseg 0.30; published: 41.3 mIoU).
# Backbone: timm's efficientvim_m4 through VSSMBackbone, its three stage maps at strides 16 / 32 / 64, no output
# norms, every BatchNorm kept in eval mode while training (the official backbone's train()), no stochastic depth.
# Neck: mmseg's FPN on the three maps, a fourth level by max pooling; FPNHead with the official (nominal)
# feature_strides 4 / 8 / 16 / 32, which set its per-level conv + 2x upsampling counts (the maps are resized to
# the finest one). The ImageNet checkpoint EfficientViM_M4_e450.pth (official release, Google Drive) saved as
# ckpts/; its 'model' entry loads, as the official backbone does.
# AdamW lr 2e-4, wd 1e-4 (betas 0.9 / 0.999, no gradient clipping), poly decay (power 0.9) to 1e-6 with no
# warm-up, 40k iterations, 8 GPUs x 4 images; validation and a checkpoint every 4k iterations.
# Test: the official AlignResize (mmseg 0.x custom: (2048, 512) keep-ratio resize rounded to multiples of 32) has
# no mmseg 1.x counterpart; the plain keep-ratio Resize of ../_base_/datasets/ade20k.py runs (the backbone takes
# any size).
_base_ = [
    '../_base_/models/fpn_vssm.py',
    '../_base_/datasets/ade20k.py',
    '../_base_/default_runtime.py',
]
crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        _delete_=True,
        type='VSSMBackbone',
        arch='efficientvim_m4',
        out_indices=(0, 1, 2),
        drop_path_rate=0.0,
        frozen_stages=-1,
        out_norm=False,
        norm_eval=True,
        init_cfg=dict(type='Pretrained', checkpoint='ckpts/EfficientViM_M4_e450.pth')),
    neck=dict(in_channels=[224, 320, 512]))
train_dataloader = dict(batch_size=4)

train_cfg = dict(type='IterBasedTrainLoop', max_iters=40000, val_interval=4000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0002, betas=(0.9, 0.999), weight_decay=0.0001),
    clip_grad=None)
param_scheduler = [dict(type='PolyLR', eta_min=1e-6, power=0.9, begin=0, end=40000, by_epoch=False)]
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=4000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
# lr above is for 8 GPUs x 4 images
auto_scale_lr = dict(enable=False, base_batch_size=32)
