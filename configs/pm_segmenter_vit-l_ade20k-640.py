# Prune-and-Merge Segmenter-Mask ViT-L/16, ADE20K, 640x640, 8 GPUs x batch 1: the official Seg-L
# setting (method.md §5.2: Seg-L-R08 528 GFLOPs, 51.9 mIoU) in span mode (§8 row 1): one merge
# matrix before block 2, blocks 2..23 on K = 0.8 N tokens, one reconstruct matrix after block 23,
# no pruning (the official span builder has none). One M / R pair instead of 24 keeps the
# overhead of dense matrices away (§7.1-9); ours are sparse either way.
_base_ = ['./segmenter_vit-l_ade20k-640.py']
model = dict(
    type='PMDistillEncoderDecoder',
    pretrained=None,
    backbone=dict(
        type='PruneMergeViT',
        pm_cfg=dict(
            mode='span',
            spans=[(2, 23)],
            keep_rate=0.8,
            prune_rate=0.0,
            depth_discount=0.0,  # the official segmentation code has none
            score_iters=102)),
    distill_cfg=dict(alpha=1.0, temperature=20.0, normalize='numel'))
# the trained uncompressed Segmenter ViT-L/16 at 640 (mmseg model zoo, 52.16 mIoU), a local file
load_from = 'checkpoints/segmenter_vit-l_mask_8x1_512x512_160k_ade20k_20220105_162750-7ef345be.pth'
custom_hooks = [dict(type='PMCompressHook')]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=1e-4, momentum=0.9, weight_decay=1e-4))
param_scheduler = [dict(type='ConstantLR', factor=1.0, begin=0, end=124000, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=124000, val_interval=8000)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=8000))
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
