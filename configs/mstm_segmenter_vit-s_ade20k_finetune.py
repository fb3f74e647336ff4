# MSTM (keep 0.7 at 3/6/9) with multi-scale fusion, finetuned with self-distillation from the
# uncompressed model (the main config's recipe). The fusion's best reading: a coarse 32-px patch
# embedding, nearest-upsampled onto the 16-px grid, LayerNorm and a zero-initialised linear map
# added to the patch embeddings before the position embedding (at initialisation the model is
# exactly the pretrained Segmenter, which loads strictly; the fusion trains from there).
_base_ = ['./_base_/segmenter_vit-s_distill_finetune.py']
model = dict(
    backbone=dict(token_reduction=dict(type='MSTM', keep_rate=0.7, reduce_blocks=(3, 6, 9),
                                       metric='keys', weighting='size',
                                       proportional_attention=True, fusion='add')))
