# Baseline: Segmenter-Mask ViT-B/16, ADE20K, 512x512, 8 GPUs x batch 1, 160k iterations
# (mmseg's segmenter_vit-b_mask_8xb1-160k_ade20k-512x512.py; 49.60 mIoU single-scale).
_base_ = ['./segmenter_vit-s_ade20k.py']
checkpoint = 'checkpoints/vit_base_p16_384_20220308-96dfe169.pth'
model = dict(
    pretrained=checkpoint,
    backbone=dict(embed_dims=768, num_heads=12),
    decode_head=dict(in_channels=768, channels=768, num_heads=12, embed_dims=768))
