# Baseline: Segmenter-Mask ViT-S/16, ADE20K, 512x512, 8 GPUs x batch 1, 160k iterations.
# Reproduces mmseg's segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py (46.19 mIoU single-scale,
# 47.85 ms+flip in mmseg's model zoo). Needs the full ADE20K under data/ade/ADEChallengeData2016
# and checkpoints/vit_small_p16_384_20220308-410f6037.pth (README "Pretrained weights").
_base_ = [
    './_base_/models/segmenter_vit-s_mask.py', './_base_/datasets/ade20k.py',
    './_base_/default_runtime.py', './_base_/schedules/schedule_160k.py'
]
optimizer = dict(lr=0.001, weight_decay=0.0)
optim_wrapper = dict(type='OptimWrapper', optimizer=optimizer)
train_dataloader = dict(batch_size=1)  # num_gpus: 8 -> total batch size 8
val_dataloader = dict(batch_size=1)
