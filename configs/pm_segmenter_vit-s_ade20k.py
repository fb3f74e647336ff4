# Prune-and-Merge Segmenter-Mask ViT-S/16, ADE20K, 512x512, 8 GPUs x batch 1 (the main config).
#
#   python tools/train.py configs/pm_segmenter_vit-s_ade20k.py
#
# 1. load_from: the trained uncompressed Segmenter ViT-S (mmseg model zoo, 46.19 mIoU).
# 2. PMCompressHook, before the first iteration: gradient-weighted attention scoring over 102
#    training iterations (the official --iter-num 100), global cross-layer search (keep_rate
#    0.6, prune_rate 0.1, depth discount 0.025 per block), per-layer units in all 12 blocks with
#    sparse trainable M / R; the structure table goes to the log and
#    work_dir/pm_structure.json. --resume restores the structure and does not score again.
# 3. Finetuning with self-distillation from the frozen uncompressed model
#    (_base_/segmenter_vit-s_distill_finetune.py, schedule _base_/schedules/finetune_124k.py).
# GFLOPs at 512x512 (1 multiply-add = 1 FLOP): about 23.6 with M/R counted against the
# baseline's 38.47 (tools/analysis_tools/get_flops.py on the compressed checkpoint).
_base_ = ['./_base_/segmenter_vit-s_distill_finetune.py']
model = dict(
    backbone=dict(
        type='PruneMergeViT',
        pm_cfg=dict(mode='layer', layers=None, representation='sparse', trainable=True)))
custom_hooks = [
    dict(type='PMCompressHook', keep_rate=0.6, prune_rate=0.1, allocation='global',
         depth_discount=0.025, official_row_clip=True, score_iters=102, score_mode='train')
]
