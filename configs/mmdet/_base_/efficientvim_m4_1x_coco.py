# Shared by the EfficientViM-M4 1x detection configs (configs/mmdet/efficientvim): schedule, runtime, and the
# backbone as the variable `backbone` (each config sets model.backbone from it); as the official runs
# (mlvlab/EfficientViM detection/configs and the configs recorded in detection/logs/*.json, mmdet 2.25).
# Backbone: timm's efficientvim_m4 through VSSMBackbone, its three stage maps at strides 16 / 32 / 64, no output
# norms (the neck's pre-norms normalise them), every BatchNorm kept in eval mode while training (the official
# backbone's train()), nothing frozen (frozen_stages=-1), no stochastic depth (the official model has none).
# The ImageNet checkpoint EfficientViM_M4_e450.pth (official release, Google Drive) saved as ckpts/; its 'model'
# entry loads, as the official backbone does (or --cfg-options model.backbone.init_cfg.checkpoint=PATH).
# AdamW lr 2e-4, betas (0.9, 0.999), wd 0.05 on every parameter (mmengine's default constructor, as the official
# mmdet 2 one: the official custom_keys name LeViT parameters that EfficientViM does not have), no gradient
# clipping; linear warm-up over 500 iterations from 0.001, lr x0.1 after epochs 8 and 11, 12 epochs.
# Total batch 16: the official runs used one GPU x 16 images; these configs say 8 GPUs x 2 (BatchNorm is frozen,
# so only the total matters); --auto-scale-lr rescales the lr for other totals.
_base_ = ['./schedules/schedule_1x.py', './default_runtime.py']
backbone = dict(
    _delete_=True,
    type='VSSMBackbone',
    arch='efficientvim_m4',
    out_indices=(0, 1, 2),
    drop_path_rate=0.0,
    frozen_stages=-1,
    out_norm=False,
    norm_eval=True,
    init_cfg=dict(type='Pretrained', checkpoint='ckpts/EfficientViM_M4_e450.pth'))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=0.0002, betas=(0.9, 0.999), weight_decay=0.05))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8, 11], gamma=0.1),
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
