# Self-distillation finetuning of a token-reduced Segmenter-Mask ViT-S/16 on ADE20K at 512x512,
# 8 GPUs x batch 1: the baseline's model and data, the finetune schedule, the frozen uncompressed
# model as teacher (alpha 1.0, T 20, KL / number of elements: the official Prune-and-Merge
# recipe), starting from the trained uncompressed Segmenter ViT-S (mmseg model zoo, 46.19 mIoU).
# A config adds the token reduction to model.backbone.
_base_ = [
    './models/segmenter_vit-s_mask.py', './datasets/ade20k.py', './default_runtime.py',
    './schedules/finetune_124k.py'
]
model = dict(
    type='PMDistillEncoderDecoder',
    pretrained=None,  # weights come from load_from
    distill_cfg=dict(alpha=1.0, temperature=20.0, normalize='numel'))
train_dataloader = dict(batch_size=1)  # num_gpus: 8 -> total batch size 8
val_dataloader = dict(batch_size=1)
# the trained uncompressed Segmenter ViT-S/16 (mmseg model zoo), a local file
load_from = 'checkpoints/segmenter_vit-s_mask_8x1_512x512_160k_ade20k_20220105_151706-511bb103.pth'
custom_hooks = [dict(type='SelfDistillationHook')]
