"""Compressed checkpoints written by earlier versions keep loading, strictly, with equal outputs.

The fixtures under ``tests/data/old_checkpoints`` were written by the code of mmseg_pm 0.1.0
(commit fd8b71c, before the layout redesign) with ``tests/data/old_checkpoints/generate.py`` of
commit 3224544 (removed since; see the git history): per-layer and
span structures, sparse and dense M / R, pruning, non-square grids, an output inside a span, and
M / R moved off their initial values as finetuning would. Keep this test forever.
"""
import glob
import json
import os.path as osp

import pytest
import torch
from mmengine.runner import load_checkpoint
from mmseg.registry import MODELS

DATA = osp.join(osp.dirname(osp.abspath(__file__)), 'data', 'old_checkpoints')
CASES = sorted(osp.basename(p)[:-5] for p in glob.glob(osp.join(DATA, '*.json')))


def test_fixtures_present():
    assert len(CASES) == 4, CASES


@pytest.mark.parametrize('name', CASES)
def test_old_checkpoint_loads_strictly_with_equal_outputs(name):
    with open(osp.join(DATA, f'{name}.json')) as f:
        cfg = json.load(f)
    model = MODELS.build(cfg)
    load_checkpoint(model, osp.join(DATA, f'{name}.pth'), map_location='cpu', strict=True,
                    logger='silent')
    model.eval()
    io = torch.load(osp.join(DATA, f'{name}_io.pth'))
    with torch.no_grad():
        out = model(io['inputs'], mode='tensor')
    assert out.shape == io['outputs'].shape
    assert (out - io['outputs']).abs().max() <= 1e-5
    assert model.backbone.is_compressed
