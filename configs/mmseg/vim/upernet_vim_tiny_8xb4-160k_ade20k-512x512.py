# UperNet 160k on ADE20K 512x512 with Vim-T. Ported from the official mmseg 0.x config (hustvl/Vim
# seg/configs/vim/upernet/upernet_vim_tiny_24_512_slide_60k.py) to mmseg 1.x: layers 5 / 11 / 17 / 23 through the
# BEiT-style pyramid (2x deconv, deconv, identity, max-pool: strides 4 / 8 / 16 / 32), UperNet and FCN widths
# 192, 512x512 position embedding, AdamW lr 1e-4, betas (0.9, 0.999), wd 0.05, layer-wise lr decay 0.92, linear
# warm-up over 1500 iterations then poly decay (power 1) to 0, total batch 32 (official 4 GPUs x 8; here 8 x 4),
# sliding-window test (512 crops, stride 341). Ours, not the official: 160k iterations (official 60k), the
# classification model as backbone (block outputs with their middle class token dropped, each with a LayerNorm;
# the official segmentation backbone drops the class token and returns the mixer outputs), drop_path_rate 0.1
# (VisionMamba's default, which the official config leaves). The checkpoint is the classification release (its
# 'model' weights; Hugging Face hustvl/Vim-tiny-midclstok): save it as ckpts/vim_t_midclstok_76p1acc.pth or pass
# --cfg-options model.backbone.init_cfg.checkpoint=PATH.
_base_ = '../_base_/upernet_vssm_160k_ade20k_512x512.py'
backbone = dict(arch='vim_tiny', out_indices=(5, 11, 17, 23), pyramid=True, drop_path_rate=0.1,
                model_kwargs=dict(img_size=512),
                init_cfg=dict(type='Pretrained', checkpoint='ckpts/vim_t_midclstok_76p1acc.pth'))
crop_size = (512, 512)
model = dict(backbone=backbone,
             decode_head=dict(in_channels=[192] * 4, channels=192),
             auxiliary_head=dict(in_channels=192),
             test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
train_dataloader = dict(batch_size=4)
optim_wrapper = dict(
    optimizer=dict(lr=1e-4, weight_decay=0.05),
    paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)}, bias_decay_mult=0., layer_decay_rate=0.92))
