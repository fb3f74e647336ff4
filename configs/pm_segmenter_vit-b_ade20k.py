# Prune-and-Merge Segmenter-Mask ViT-B/16, ADE20K, 512x512, 8 GPUs x batch 1.
# The main config (pm_segmenter_vit-s_ade20k.py) with the ViT-B sizes of segmenter_vit-b_ade20k.py.
_base_ = ['./pm_segmenter_vit-s_ade20k.py']
model = dict(
    backbone=dict(embed_dims=768, num_heads=12),
    decode_head=dict(in_channels=768, channels=768, num_heads=12, embed_dims=768))
# the trained uncompressed Segmenter ViT-B/16 (mmseg model zoo, 49.60 mIoU), a local file
load_from = 'checkpoints/segmenter_vit-b_mask_8x1_512x512_160k_ade20k_20220105_151706-bc533b08.pth'
