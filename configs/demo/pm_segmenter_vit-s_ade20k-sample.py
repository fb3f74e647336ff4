# Demo / smoke run of the main config on the 38-image ADE20K sample (NOT a result): compress the
# demo baseline (configs/demo/segmenter_vit-s_ade20k-sample.py, trained first by `make demo`)
# with 4 scoring iterations, then finetune it with self-distillation for 10 iterations.
_base_ = ['../pm_segmenter_vit-s_ade20k.py']
data_root = 'data/ade20k_sample/ADEChallengeData2016'
load_from = 'work_dirs/demo/baseline/iter_20.pth'
custom_hooks = [dict(type='PMCompressHook', keep_rate=0.6, prune_rate=0.1, score_iters=4)]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=10, val_interval=10)
param_scheduler = [dict(type='ConstantLR', factor=1.0, begin=0, end=10, by_epoch=False)]
optim_wrapper = dict(optimizer=dict(lr=1e-3))
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=10))
