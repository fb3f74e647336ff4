# ToMe (r = (52, -1), see tome_segmenter_vit-s_ade20k.py) on Segmenter-Mask ViT-S/16, finetuned
# with self-distillation from the uncompressed model (same recipe as the Prune-and-Merge main
# config): python tools/train.py configs/tome_segmenter_vit-s_ade20k_finetune.py
_base_ = ['./_base_/segmenter_vit-s_distill_finetune.py']
model = dict(
    backbone=dict(token_reduction=dict(type='ToMe', r=(52, -1), proportional_attention=True)))
