# MSTM at keep_rate 0.6 (blocks 3, 6, 9): 23.85 GFLOPs, matched to the main Prune-and-Merge
# config (23.6, within +-3%) for the comparison table; training-free as
# mstm_segmenter_vit-s_ade20k.py.
_base_ = ['./mstm_segmenter_vit-s_ade20k.py']
model = dict(backbone=dict(token_reduction=dict(keep_rate=0.6)))
