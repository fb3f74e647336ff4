# Baseline: Segmenter-Mask ViT-L/16, ADE20K, 640x640, 8 GPUs x batch 1, 160k iterations
# (mmseg's segmenter_vit-l_mask_8xb1-160k_ade20k-512x512.py, which trains at 640x640;
# 52.16 mIoU single-scale).
_base_ = [
    './_base_/models/segmenter_vit-s_mask.py', './_base_/datasets/ade20k_640x640.py',
    './_base_/default_runtime.py', './_base_/schedules/schedule_160k.py'
]
checkpoint = 'checkpoints/vit_large_p16_384_20220308-d4efb41d.pth'
model = dict(
    data_preprocessor=dict(size=(640, 640)),
    pretrained=checkpoint,
    backbone=dict(img_size=(640, 640), embed_dims=1024, num_layers=24, num_heads=16),
    decode_head=dict(in_channels=1024, channels=1024, num_heads=16, embed_dims=1024),
    test_cfg=dict(mode='slide', crop_size=(640, 640), stride=(608, 608)))
optimizer = dict(lr=0.001, weight_decay=0.0)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer)
train_dataloader = dict(batch_size=1)
val_dataloader = dict(batch_size=1)
