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
def test_config_builds(path):
    """Every shipped config reads and its model, hooks and compression settings build."""
    from mmseg_pm.engine.preflight import build_model, check_hooks
    cfg = Config.fromfile(path)
    assert cfg.custom_imports['imports'] == ['mmseg_pm']
    model = build_model(cfg)
    check_hooks(cfg, model)
    assert model.backbone.img_size == tuple(cfg.crop_size)


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


STOCK = [  # mmseg's packaged configs built on VisionTransformer, with a method swapped in
    ('segmenter/segmenter_vit-s_mask_8xb1-160k_ade20k-512x512.py', dict(type='ToMe', r=2)),
    ('segmenter/segmenter_vit-s_fcn_8xb1-160k_ade20k-512x512.py',
     dict(type='EViT', keep_rate=0.5, drop_blocks=(3, 6, 9))),
    ('vit/vit_deit-s16_mln_upernet_8xb2-160k_ade20k-512x512.py',
     dict(type='MSTM', keep_rate=0.5, reduce_blocks=(3, 6, 9))),
    ('dpt/dpt_vit-b16_8xb2-160k_ade20k-512x512.py', dict(type='ToMe', r=(2, -1))),
    ('setr/setr_vit-l-mla_8xb1-160k_ade20k-512x512.py',
     dict(type='ALGM', threshold=0.5, global_block=12)),
]


@pytest.mark.parametrize('path,token_reduction', STOCK, ids=[s[0].split('/')[0] for s in STOCK])
def test_methods_swap_into_mmseg_stock_vit_configs(path, token_reduction):
    """Changing the backbone type (and adding token_reduction) is all it takes; the decode
    heads get full-grid features (identical shapes to the unreduced model)."""
    from mmseg_pm.analysis.build import segmentor_cfg, variant_cfg
    import mmseg
    cfg = Config.fromfile(osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs', path))
    plain = variant_cfg(segmentor_cfg(cfg), 'plain')
    reduced = variant_cfg(segmentor_cfg(cfg), 'reduced', token_reduction)
    assert reduced['backbone']['type'] == 'TokenReductionViT'
    x = torch.randn(1, 3, 64, 64)
    outs = []
    for model_cfg in (plain, reduced):
        model = MODELS.build(model_cfg)
        model.eval()
        with torch.no_grad():
            outs.append(model(x, mode='tensor'))
    assert model.backbone.is_reducing
    assert outs[1].shape == outs[0].shape and torch.isfinite(outs[1]).all()
