# Finetuning schedule of the compressed / token-reduced models: derived from the official
# Prune-and-Merge segmentation finetune (wafev/PM-Segmenter): 49 effective epochs of ADE20K
# (20,210 images) at global batch 8 = 49 x 2527 ~= 124k iterations; SGD momentum 0.9, weight
# decay 1e-4, constant lr 1e-4 (the official cosine schedule never steps).
optim_wrapper = dict(
    type='OptimWrapper', optimizer=dict(type='SGD', lr=1e-4, momentum=0.9, weight_decay=1e-4))
param_scheduler = [dict(type='ConstantLR', factor=1.0, begin=0, end=124000, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=124000, val_interval=8000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=8000),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
# parameters without a gradient in some iterations (identity units) must not stop DDP
model_wrapper_cfg = dict(type='MMDistributedDataParallel', find_unused_parameters=True)
