# Demo / smoke run of the baseline on the 38-image ADE20K sample (NOT a result: 30 training
# images, 8 validation images, 20 iterations from random initialisation).
# Prepare the data first: python tools/dataset_converters/prepare_ade20k_sample.py
_base_ = ['../segmenter_vit-s_ade20k.py']
data_root = 'data/ade20k_sample/ADEChallengeData2016'
model = dict(pretrained=None)  # no ImageNet weights needed for the smoke run
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root))
val_dataloader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
train_cfg = dict(max_iters=20, val_interval=20)
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=20, by_epoch=False)]
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=20))
