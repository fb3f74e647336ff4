# Prune-and-Merge Segmenter-Mask ViT-T/16, ADE20K, 512x512, 8 GPUs x batch 1.
# The main config (pm_segmenter_vit-s_ade20k.py) with the ViT-T sizes of segmenter_vit-t_ade20k.py.
_base_ = ['./pm_segmenter_vit-s_ade20k.py']
model = dict(
    backbone=dict(embed_dims=192, num_heads=3),
    decode_head=dict(in_channels=192, channels=192, num_heads=3, embed_dims=192))
# the trained uncompressed Segmenter ViT-T/16 (mmseg model zoo, 39.99 mIoU), a local file
load_from = 'checkpoints/segmenter_vit-t_mask_8x1_512x512_160k_ade20k_20220105_151706-ffcf7509.pth'
