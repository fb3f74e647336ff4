# Prune-and-Merge Segmenter-Mask ViT-L/16, ADE20K, 640x640, 8 GPUs x batch 1: the official Seg-L
# setting of PM-Segmenter (Seg-L-R08: 528 GFLOPs, 51.9 mIoU in its README) in span mode: one
# merge matrix before block 2, blocks 2..23 on K = 0.8 N tokens, one reconstruct matrix after
# block 23, no pruning (the official span builder has none), no depth discount (as the official
# segmentation code). One M / R pair instead of 24 keeps the dense matrices' overhead away;
# ours are sparse either way. Model and data as segmenter_vit-l_ade20k-640.py.
_base_ = [
    './_base_/models/segmenter_vit-s_mask.py', './_base_/datasets/ade20k_640x640.py',
    './_base_/default_runtime.py', './_base_/schedules/finetune_124k.py'
]
model = dict(
    type='PMDistillEncoderDecoder',
    pretrained=None,
    data_preprocessor=dict(size=(640, 640)),
    backbone=dict(type='PruneMergeViT', img_size=(640, 640), embed_dims=1024, num_layers=24,
                  num_heads=16, pm_cfg=dict(mode='span', spans=[(2, 23)])),
    decode_head=dict(in_channels=1024, channels=1024, num_heads=16, embed_dims=1024),
    test_cfg=dict(mode='slide', crop_size=(640, 640), stride=(608, 608)),
    distill_cfg=dict(alpha=1.0, temperature=20.0, normalize='numel'))
train_dataloader = dict(batch_size=1)
val_dataloader = dict(batch_size=1)
# the trained uncompressed Segmenter ViT-L/16 at 640 (mmseg model zoo, 52.16 mIoU), a local file
load_from = 'checkpoints/segmenter_vit-l_mask_8x1_512x512_160k_ade20k_20220105_162750-7ef345be.pth'
custom_hooks = [
    dict(type='PMCompressHook', keep_rate=0.8, prune_rate=0.0, depth_discount=0.0,
         score_iters=102)
]
