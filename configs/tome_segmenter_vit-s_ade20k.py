# ToMe (Bolya et al., ICLR 2023, arXiv 2210.09461) on Segmenter-Mask ViT-S/16, ADE20K, 512x512:
# training-free evaluation of the trained uncompressed Segmenter ViT-S (mmseg model zoo):
#
#   python tools/test.py configs/tome_segmenter_vit-s_ade20k.py \
#       checkpoints/segmenter_vit-s_mask_8x1_512x512_160k_ade20k_20220105_151706-511bb103.pth
#
# r = (52, -1): ToMe's decreasing schedule, r_l = 104, 94, ..., 0 merges in blocks 0..11
# (1025 -> 418 tokens); 23.71 GFLOPs with the merge ops counted (23.62 without), the main
# Prune-and-Merge config 23.6: within +-3%. (A constant r = 70 gives 24.00 but leaves only 185
# tokens for the dense head.) Proportional attention on, as ToMe for off-the-shelf models.
_base_ = ['./segmenter_vit-s_ade20k.py']
model = dict(
    pretrained=None,
    backbone=dict(token_reduction=dict(type='ToMe', r=(52, -1), proportional_attention=True)))
