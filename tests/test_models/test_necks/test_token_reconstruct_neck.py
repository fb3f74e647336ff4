import torch
from mmseg.registry import MODELS

import mmseg_pm  # noqa: F401
from mmseg_pm.models import CompressedTokens, PruneMergeViT
from mmseg_pm.functional import prune_merge as pm

TINY = dict(img_size=(64, 64), patch_size=16, embed_dims=32, num_layers=4, num_heads=2,
            out_indices=(0, 1, 2, 3), final_norm=True)


def _pair():
    torch.manual_seed(0)
    restored = PruneMergeViT(pm_cfg=dict(mode='span', spans=[(1, 3)]), **TINY)
    handed = PruneMergeViT(
        pm_cfg=dict(mode='span', spans=[(1, 3)], restore_outputs=False), **TINY)
    handed.load_state_dict(restored.state_dict())
    s = pm.structure_from_scores(torch.rand(16), (4, 4), 0.5, 0.25)
    for m in (restored, handed):
        m.install_structures({1: s})
        m.eval()
    return restored, handed


def test_neck_restores_compressed_outputs_exactly():
    restored, handed = _pair()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = restored(x)
        outs = handed(x)
        assert [isinstance(o, CompressedTokens) for o in outs] == [False, True, True, False]
        assert outs[1].tokens.shape == (2, 1 + 8, 32)
        neck = MODELS.build(dict(type='TokenReconstructNeck'))
        for a, b in zip(ref, neck(outs)):
            assert a.shape == (2, 32, 4, 4) and torch.equal(a, b)


def test_neck_composes_with_multilevel_neck():
    _, handed = _pair()
    neck = MODELS.build(dict(type='TokenReconstructNeck', neck=dict(
        type='MultiLevelNeck', in_channels=[32] * 4, out_channels=16, scales=[4, 2, 1, 0.5])))
    with torch.no_grad():
        outs = neck(handed(torch.randn(1, 3, 64, 64)))
    assert [tuple(o.shape) for o in outs] == [(1, 16, 16, 16), (1, 16, 8, 8), (1, 16, 4, 4),
                                              (1, 16, 2, 2)]
