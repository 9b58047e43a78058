# UperNet 160k on ADE20K 512x512 with MambaVision-S, the official recipe (NVlabs/MambaVision
# semantic_segmentation configs, mmseg 1.2.2): AdamW lr 6e-5, wd 0.01 (none on norms), linear warm-up over
# 1500 iterations then poly decay, 8 GPUs x 2 images (total batch 16). Backbone windows 160 / 56 in stages 3-4 (the
# official values). The official runs use AMP: add --amp to train.py. drop_path_rate 0.2: the official config
# writes another value, but the official backbone does not pass it on, so the released segmentor trained with
# its default 0.2.
_base_ = '../_base_/upernet_vssm_160k_ade20k_512x512.py'
pretrained = 'https://huggingface.co/nvidia/MambaVision-S-1K/resolve/main/mambavision_small_1k.pth.tar'
backbone = dict(arch='mambavision_small', drop_path_rate=0.2, model_kwargs=dict(window_size=(8, 8, 160, 56)),
                init_cfg=dict(type='Pretrained', checkpoint=pretrained))
model = dict(backbone=backbone, decode_head=dict(in_channels=[96, 192, 384, 768]),
             auxiliary_head=dict(in_channels=384))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
train_dataloader = dict(batch_size=2)
