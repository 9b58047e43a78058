# 12 epochs, AdamW lr 1e-4 (total batch 16), wd 0.05, linear warm-up over 1000 iterations, lr x0.1 after
# epochs 8 and 11 (the official VMamba Mask R-CNN 1x recipe).
max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1),
]

# No weight decay on norms (custom key) nor on the SSM parameters A_logs / Ds / dt_projs_bias
# (VSSMOptimWrapperConstructor). layer_decay_rate=1.0: the official recipes use no layer-wise lr decay.
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='VSSMOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}, layer_decay_rate=1.0))

# lr above is for 8 GPUs x 2 images; --auto-scale-lr rescales it for other batch sizes
auto_scale_lr = dict(enable=False, base_batch_size=16)
