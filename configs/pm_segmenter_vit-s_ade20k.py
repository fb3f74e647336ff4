# Prune-and-Merge Segmenter-Mask ViT-S/16, ADE20K, 512x512, 8 GPUs x batch 1 (the main config).
# = the baseline's model and data (segmenter_vit-s_ade20k.py) + compression + self-distillation
# finetuning.
#
#   python tools/train.py configs/pm_segmenter_vit-s_ade20k.py
#
# 1. load_from: the trained uncompressed Segmenter ViT-S (mmseg model zoo, 46.19 mIoU).
# 2. PMCompressHook, before the first iteration: gradient-weighted attention scoring over 102
#    training iterations (the official --iter-num 100), global cross-layer search (keep_rate
#    0.6, prune_rate 0.1, depth discount 0.025 per block), per-layer units in all 12 blocks with
#    sparse trainable M / R; the structure table goes to the log and
#    work_dir/pm_structure.json. --resume restores the structure and does not score again.
# 3. Finetuning with self-distillation from the frozen uncompressed model (alpha 1.0, T 20,
#    KL / number of elements), schedule in _base_/schedules/finetune_124k.py.
# GFLOPs: tools/analysis_tools/get_flops.py after compression (about 38% fewer than the
# baseline with keep_rate 0.6).
_base_ = [
    './_base_/models/segmenter_vit-s_mask.py', './_base_/datasets/ade20k.py',
    './_base_/default_runtime.py', './_base_/schedules/finetune_124k.py'
]
train_dataloader = dict(batch_size=1)  # num_gpus: 8 -> total batch size 8
val_dataloader = dict(batch_size=1)
model = dict(
    type='PMDistillEncoderDecoder',
    pretrained=None,  # weights come from load_from
    backbone=dict(
        type='PruneMergeViT',
        pm_cfg=dict(mode='layer', layers=None, representation='sparse', trainable=True)),
    distill_cfg=dict(alpha=1.0, temperature=20.0, normalize='numel'))
# the trained uncompressed Segmenter ViT-S/16 (mmseg model zoo), a local file
load_from = 'checkpoints/segmenter_vit-s_mask_8x1_512x512_160k_ade20k_20220105_151706-511bb103.pth'
custom_hooks = [
    dict(type='PMCompressHook', keep_rate=0.6, prune_rate=0.1, allocation='global',
         depth_discount=0.025, official_row_clip=True, score_iters=102, score_mode='train')
]
