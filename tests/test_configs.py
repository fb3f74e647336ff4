"""Every shipped config loads; the Segmenter models build and run with PruneMergeViT."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmseg.registry import MODELS

import mmseg_pm  # noqa: F401
from mmseg_pm.functional import prune_merge as pm

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(osp.join(REPO, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p)


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: osp.relpath(p, REPO))
def test_config_loads(path):
    cfg = Config.fromfile(path)
    assert cfg.custom_imports['imports'] == ['mmseg_pm']
    assert MODELS.get(cfg.model.type) is not None


def _tiny_segmenter(head):
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'segmenter_vit-s_ade20k.py'))
    model = cfg.model
    model.pretrained = None
    model.data_preprocessor.size = (64, 64)
    model.backbone.update(type='PruneMergeViT', img_size=(64, 64), embed_dims=32, num_heads=2,
                          num_layers=3, pm_cfg=dict(mode='layer'))
    model.test_cfg = dict(mode='whole')
    if head == 'linear':
        model.decode_head = dict(type='FCNHead', in_channels=32, channels=32, num_convs=0,
                                 concat_input=False, dropout_ratio=0.0, num_classes=150,
                                 norm_cfg=dict(type='BN', requires_grad=True),
                                 loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0))
    else:
        model.decode_head.update(in_channels=32, channels=32, embed_dims=32, num_heads=2)
    return MODELS.build(model)


@pytest.mark.parametrize('head', ['mask', 'linear'])
def test_segmenter_builds_and_runs_compressed(head):
    seg = _tiny_segmenter(head)
    seg.init_weights()
    bb = seg.backbone
    bb.install_structures({u.start: pm.structure_from_scores(torch.rand(16), (4, 4), 0.5, 0.25)
                           for u in bb.pm_units})
    seg.eval()
    with torch.no_grad():
        logits = seg(torch.randn(2, 3, 64, 64), mode='tensor')
    assert logits.shape == (2, 150, 4, 4)  # logits at the H/16 x W/16 token grid
