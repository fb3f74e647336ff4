# Prune-and-Merge Segmenter-Mask ViT-S/16, ADE20K, 512x512, 8 GPUs x batch 1 (the main config).
# = segmenter_vit-s_ade20k.py (the baseline) + compression + self-distillation finetuning.
#
#   python tools/train.py configs/pm_segmenter_vit-s_ade20k.py
#
# 1. load_from: the trained uncompressed Segmenter ViT-S (mmseg model zoo, 46.19 mIoU).
# 2. PMCompressHook, before the first iteration: gradient-weighted attention scoring over 102
#    training iterations (the official --iter-num 100, method.md §2), global cross-layer search
#    (keep_rate 0.6, prune_rate 0.1, depth discount 0.025 per block, §3), per-layer units in all
#    12 blocks with sparse trainable M / R; the structure table goes to the log and
#    work_dir/pm_structure.json. --resume restores the structure and does not score again.
# 3. Finetuning with self-distillation from the frozen uncompressed model (alpha 1.0, T 20,
#    KL / number of elements, §4, §8 row 6). Schedule derived from the official segmentation
#    finetune (wafev/PM-Segmenter): 49 effective epochs of ADE20K (20,210 images) at global
#    batch 8 = 49 x 2527 ~= 124k iterations; SGD momentum 0.9, weight decay 1e-4, constant lr
#    1e-4 (the official cosine schedule never steps, §4.2).
# GFLOPs at 512x512 (mmengine.analysis, 1 multiply-add = 1 FLOP): baseline 38.47; keep_rate 0.6
# gives about 23.6 with M/R counted (~39% fewer; exact numbers: get_flops.py after compression).
_base_ = ['./segmenter_vit-s_ade20k.py']
model = dict(
    type='PMDistillEncoderDecoder',
    pretrained=None,  # weights come from load_from
    backbone=dict(
        type='PruneMergeViT',
        pm_cfg=dict(
            mode='layer',
            layers=None,  # all blocks
            representation='sparse',
            trainable=True,
            keep_rate=0.6,
            prune_rate=0.1,
            allocation='global',
            depth_discount=0.025,
            official_row_clip=True,
            score_iters=102,
            score_mode='train')),
    distill_cfg=dict(alpha=1.0, temperature=20.0, normalize='numel'))
# the trained uncompressed Segmenter ViT-S/16 (mmseg model zoo), a local file
load_from = 'checkpoints/segmenter_vit-s_mask_8x1_512x512_160k_ade20k_20220105_151706-511bb103.pth'
custom_hooks = [dict(type='PMCompressHook')]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=1e-4, momentum=0.9, weight_decay=1e-4))
param_scheduler = [dict(type='ConstantLR', factor=1.0, begin=0, end=124000, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=124000, val_interval=8000)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=8000))
# identity units (if any) receive no gradient; keep DDP from failing on them
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
