# MSTM ("Multi-Scale And Token Mergence", Bian et al., arXiv 2306.04897; reconstructed from the
# abstract, see README "MSTM") on Segmenter-Mask ViT-S/16, ADE20K, 512x512: training-free
# evaluation of the trained uncompressed Segmenter ViT-S (mmseg model zoo):
#
#   python tools/test.py configs/mstm_segmenter_vit-s_ade20k.py \
#       checkpoints/segmenter_vit-s_mask_8x1_512x512_160k_ade20k_20220105_151706-511bb103.pth
#
# Defaults of the reconstruction: at blocks 3, 6, 9 keep ceil(0.7 n) crucial tokens (CLS
# attention averaged over heads), merge every other token into its most similar crucial token
# (cosine on keys averaged over heads), size-weighted, proportional attention; no multi-scale
# fusion (its parameters are new: they need the finetuning config). 26.41 GFLOPs at 512x512.
_base_ = ['./segmenter_vit-s_ade20k.py']
model = dict(
    pretrained=None,
    backbone=dict(token_reduction=dict(type='MSTM', keep_rate=0.7, reduce_blocks=(3, 6, 9),
                                       metric='keys', weighting='size',
                                       proportional_attention=True, fusion=None)))
