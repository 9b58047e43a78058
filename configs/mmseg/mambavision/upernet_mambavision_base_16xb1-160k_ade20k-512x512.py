# UperNet 160k on ADE20K 512x512 with MambaVision-B (layer scale 1e-5), the official recipe (NVlabs/MambaVision
# semantic_segmentation configs, mmseg 1.2.2): AdamW lr 5e-5, wd 0.01 (none on norms), linear warm-up over
# 1500 iterations then poly decay, 16 GPUs x 1 image (total batch 16). Backbone windows 64 / 32 in stages 3-4 (the
# official values). The official runs use AMP: add --amp to train.py. drop_path_rate 0.2: the official config
# writes another value, but the official backbone does not pass it on, so the released segmentor trained with
# its default 0.2.
_base_ = '../_base_/upernet_vssm_160k_ade20k_512x512.py'
pretrained = 'https://huggingface.co/nvidia/MambaVision-B-1K/resolve/main/mambavision_base_1k.pth.tar'
backbone = dict(arch='mambavision_base', drop_path_rate=0.2, model_kwargs=dict(window_size=(8, 8, 64, 32)),
                init_cfg=dict(type='Pretrained', checkpoint=pretrained))
model = dict(backbone=backbone, decode_head=dict(in_channels=[128, 256, 512, 1024]),
             auxiliary_head=dict(in_channels=512))
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}))
train_dataloader = dict(batch_size=1)
