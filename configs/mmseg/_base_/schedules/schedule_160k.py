# 160k iterations, AdamW lr 6e-5 (total batch 16), wd 0.01; linear warm-up from 1e-6 over 1500
# iterations, then poly decay (power 1) to 0: the official VMamba UperNet recipe. Validation and a
# checkpoint every 16k iterations.
train_cfg = dict(type='IterBasedTrainLoop', max_iters=160000, val_interval=16000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# No weight decay on norms (custom key) nor on the SSM parameters A_logs / Ds / dt_projs_bias
# (VSSMOptimWrapperConstructor); no layer-wise lr decay in the official recipe.
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='VSSMOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=0.00006, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}, layer_decay_rate=1.0),
    clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=16000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
