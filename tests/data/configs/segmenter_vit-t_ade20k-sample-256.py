# Test config: the uncompressed twin of configs/demo/pm_segmenter_vit-t_ade20k-sample-256.py
# (Segmenter-Mask ViT-T/16 on 256x256 crops of the ADE20K sample, random initialisation,
# 2 iterations): the baseline side of the tool tests.
_base_ = ['../../../configs/segmenter_vit-t_ade20k.py']
data_root = 'data/ade20k_sample/ADEChallengeData2016'
crop_size = (256, 256)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size, drop_path_rate=0.0),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(192, 192)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(1024, 256), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(1024, 256), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
randomness = dict(seed=0, deterministic=False)
train_cfg = dict(max_iters=2, val_interval=2)
param_scheduler = [dict(type='ConstantLR', factor=1.0, begin=0, end=2, by_epoch=False)]
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
