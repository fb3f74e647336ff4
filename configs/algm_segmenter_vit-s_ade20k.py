# ALGM (Norouzi et al., CVPR 2024, arXiv 2406.09936) on Segmenter-Mask ViT-S/16, ADE20K,
# 512x512: training-free evaluation of the trained uncompressed Segmenter ViT-S:
#
#   python tools/test.py configs/algm_segmenter_vit-s_ade20k.py \
#       checkpoints/segmenter_vit-s_mask_8x1_512x512_160k_ade20k_20220105_151706-511bb103.pth
#
# Local 2x2 merging in block 0, global merging in block 4 (as released for ViT-S), per-image
# counts (batches padded, padding masked; batch_minimum=True reproduces the released code).
# The token count depends on the image and the weights: the local threshold sets GFLOPs.
# threshold 0.88 is the released ADE20K ViT-S setting; the value that matches the main
# Prune-and-Merge config (23.6 GFLOPs +-3%) on your checkpoint and images is found by
# tools/analysis_tools/compare_methods.py (--methods algm --gflops 0.615), printed there.
_base_ = ['./segmenter_vit-s_ade20k.py']
model = dict(
    pretrained=None,
    backbone=dict(token_reduction=dict(type='ALGM', threshold=0.88, local_block=0,
                                       global_block=4, batch_minimum=False)))
