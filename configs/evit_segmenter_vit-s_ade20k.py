# EViT (Liang et al., ICLR 2022, arXiv 2202.07800) on Segmenter-Mask ViT-S/16, ADE20K, 512x512:
# training-free evaluation of the trained uncompressed Segmenter ViT-S (mmseg model zoo):
#
#   python tools/test.py configs/evit_segmenter_vit-s_ade20k.py \
#       checkpoints/segmenter_vit-s_mask_8x1_512x512_160k_ade20k_20220105_151706-511bb103.pth
#
# keep_rate 0.6 at blocks 3, 6, 9 (EViT's drop_loc) with the inattentive tokens fused into one;
# dropped positions restored with their value at the drop ('hold'). 1025 tokens in blocks 0-3,
# then 617, 371, 224: 23.86 GFLOPs (the main Prune-and-Merge config 23.6: within +-3%).
_base_ = ['./segmenter_vit-s_ade20k.py']
model = dict(
    pretrained=None,
    backbone=dict(token_reduction=dict(type='EViT', keep_rate=0.6, drop_blocks=(3, 6, 9),
                                       fuse=True, restore='hold')))
