"""mmseg_pm.analysis.classification on a tiny timm ViT (random weights, no download)."""
import pytest
import timm
import torch

from mmseg_pm.analysis.classification import (classifier_from_timm, count_classifier_flops,
                                              timm_vit_backbone_cfg)
from mmseg_pm.errors import ConfigError

TINY = dict(img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2, num_classes=10,
            pretrained=False)


def tiny_timm(**kwargs):
    return timm.create_model('vit_tiny_patch16_224', **dict(TINY, **kwargs)).eval()


def test_dense_parity_and_mstm_tokens():
    tm = tiny_timm()
    cfg = timm_vit_backbone_cfg(tm)
    assert cfg['norm_cfg'] == dict(type='LN', eps=1e-6) and cfg['mlp_ratio'] == 4
    dense = classifier_from_timm(tm)
    mstm_cfg = dict(type='MSTM', keep_rate=0.5, reduce_blocks=(1, 2))
    mstm = classifier_from_timm(tm, mstm_cfg)
    fused = classifier_from_timm(tm, dict(mstm_cfg, fusion='add'))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = tm(x)
        assert (dense(x) - ref).abs().max() <= 1e-5
        assert mstm(x).shape == ref.shape
        # the fusion's output map starts at zero: same logits as without fusion
        assert (fused(x) - mstm(x)).abs().max() <= 1e-5
    fd, fm = count_classifier_flops(dense, (64, 64)), count_classifier_flops(mstm, (64, 64))
    assert fd['tokens'] == [17] * 4 and fm['tokens'] == [17, 17, 9, 5]
    assert fd['flops_mr_counted'] == fd['flops_mr_not_counted'] == fd['flops']['total']
    assert fm['flops_mr_counted'] > fm['flops']['total'] > fm['flops_mr_not_counted']
    assert fm['flops_mr_counted'] < fd['flops_mr_counted']
    assert fd['flops']['head'] == 32 * 10
    ff = count_classifier_flops(fused, (64, 64))
    assert ff['tokens'] == fm['tokens'] and ff['flops']['total'] > fm['flops']['total']


@pytest.mark.parametrize('kwargs', [dict(global_pool='avg'), dict(reg_tokens=1),
                                    dict(class_token=False, global_pool='avg')])
def test_refuses_what_the_class_token_head_cannot_reproduce(kwargs):
    with pytest.raises(ConfigError):
        timm_vit_backbone_cfg(tiny_timm(**kwargs))
