# Baseline: Segmenter-Mask ViT-T/16, ADE20K, 512x512, 8 GPUs x batch 1, 160k iterations
# (mmseg's segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py; 39.99 mIoU single-scale).
_base_ = ['./segmenter_vit-s_ade20k.py']
checkpoint = 'checkpoints/vit_tiny_p16_384_20220308-cce8c795.pth'
model = dict(
    pretrained=checkpoint,
    backbone=dict(embed_dims=192, num_heads=3),
    decode_head=dict(in_channels=192, channels=192, num_heads=3, embed_dims=192))
