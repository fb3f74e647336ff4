# EViT (keep 0.6 at 3/6/9, see evit_segmenter_vit-s_ade20k.py) on Segmenter-Mask ViT-S/16,
# finetuned with self-distillation from the uncompressed model (the main config's recipe).
_base_ = ['./_base_/segmenter_vit-s_distill_finetune.py']
model = dict(
    backbone=dict(token_reduction=dict(type='EViT', keep_rate=0.6, drop_blocks=(3, 6, 9),
                                       fuse=True, restore='hold')))
