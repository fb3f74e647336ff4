"""Shared fixtures: seeds, the real ADE20K sample, tiny model factories."""
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch
from mmseg.utils import register_all_modules

import mmseg_pm  # noqa: F401  (registers the package, applies the stack fixes)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
register_all_modules(init_default_scope=True)
SAMPLE = os.environ.get('MMSEG_PM_SAMPLE',
                        osp.join(osp.dirname(REPO), 'shared', 'data', 'ade20k_sample'))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(scope='session')
def sample_root(tmp_path_factory):
    """The real sample linked as 30 train / 8 val (tools/prepare_ade20k_sample.py)."""
    assert osp.isdir(SAMPLE), f'the ADE20K sample is missing: {SAMPLE}'
    out = tmp_path_factory.mktemp('ade20k_sample')
    subprocess.run([sys.executable, osp.join(REPO, 'tools', 'prepare_ade20k_sample.py'),
                    '--src', SAMPLE, '--out', str(out)], check=True)
    return str(out / 'ADEChallengeData2016')


def run_tool(*args, cwd=REPO, check=True, env=None):
    """Run ``python tools/<args>`` and return the CompletedProcess (text output)."""
    e = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env=e)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n'
                             f'{proc.stderr[-4000:]}')
    return proc


#: a tiny Segmenter (ViT embed 64, 4 blocks, 2 heads, 128 x 128 crop: 8 x 8 = 64 patches,
#: one-layer mask head) derived from the repository's ViT-T config; slide inference
TINY_VIT_CONFIG = '''_base_ = [{base!r}]
data_root = {data_root!r}
crop_size = (128, 128)
model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(img_size=crop_size, embed_dims=64, num_layers=4, num_heads=2,
                  drop_path_rate=0.0),
    decode_head=dict(in_channels=64, channels=64, num_heads=2, embed_dims=64, num_layers=1),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(96, 96)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(512, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(512, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
'''


def write_tiny_vit(folder, data_root, extra='', seed=0):
    """Write ``tiny.py`` (:data:`TINY_VIT_CONFIG` + ``extra`` lines) and ``tiny.pth`` (its
    random initialisation, ``{'state_dict': ...}``) into ``folder``; returns both paths."""
    from mmseg_pm.analysis.build import load_config, segmentor_cfg, build_segmentor
    folder = str(folder)
    config = osp.join(folder, 'tiny.py')
    with open(config, 'w') as f:
        f.write(TINY_VIT_CONFIG.format(
            base=osp.join(REPO, 'configs', 'segmenter_vit-t_ade20k.py'),
            data_root=str(data_root)) + extra)
    torch.manual_seed(seed)
    model = build_segmentor(segmentor_cfg(load_config(config)))
    checkpoint = osp.join(folder, 'tiny.pth')
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    return config, checkpoint
