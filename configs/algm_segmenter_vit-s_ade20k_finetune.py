# ALGM (see algm_segmenter_vit-s_ade20k.py) on Segmenter-Mask ViT-S/16, finetuned with
# self-distillation from the uncompressed model (the main config's recipe; the released ALGM
# models train with ALGM in the loop from ImageNet weights instead).
_base_ = ['./_base_/segmenter_vit-s_distill_finetune.py']
model = dict(
    backbone=dict(token_reduction=dict(type='ALGM', threshold=0.88, local_block=0,
                                       global_block=4, batch_minimum=False)))
