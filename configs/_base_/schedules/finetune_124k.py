# Finetuning schedule of the compressed / token-reduced models: derived from the official
# Prune-and-Merge segmentation finetune (wafev/PM-Segmenter): 49 effective epochs of ADE20K
# (20,210 images) at global batch 8 = 49 x 2527 ~= 124k iterations; SGD momentum 0.9, weight
# decay 1e-4, constant lr 1e-4 (the official cosine schedule never steps).
_base_ = ['./schedule_160k.py']
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=1e-4, momentum=0.9, weight_decay=1e-4))
param_scheduler = [dict(type='ConstantLR', factor=1.0, begin=0, end=124000, by_epoch=False)]
train_cfg = dict(max_iters=124000, val_interval=8000)
default_hooks = dict(checkpoint=dict(interval=8000))
# parameters without a gradient in some iterations (identity units) must not stop DDP
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
