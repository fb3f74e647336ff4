"""FLOP counting: fused attention counted exactly like the explicit path, equal to a hand count;
the reducers' own cost in both conventions."""
import pytest
import torch
from mmseg.registry import MODELS

import mmseg_pm  # noqa: F401
from mmseg_pm.analysis import count_flops
from mmseg_pm.analysis.build import variant_cfg

C, L_PATCH, HEADS, LAYERS = 32, 16, 2, 2  # 64x64 image, 16 px patches: 4x4 grid


def tiny_segmenter():
    return dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[0] * 3, std=[1] * 3),
        backbone=dict(type='VisionTransformer', img_size=(64, 64), patch_size=16, embed_dims=C,
                      num_layers=LAYERS, num_heads=HEADS, final_norm=True),
        decode_head=dict(type='FCNHead', in_channels=C, channels=C, num_convs=0,
                         concat_input=False, num_classes=3, norm_cfg=None,
                         loss_decode=dict(type='CrossEntropyLoss')),
        test_cfg=dict(mode='whole'))


def hand_count() -> int:
    """Multiply-adds of the tiny model (mmengine's conventions: linear = in * out per token,
    matmul = product of dims, LayerNorm 5 per element with affine, a 1x1 conv as a linear)."""
    n = L_PATCH + 1
    patch_embed = L_PATCH * C * 3 * 16 * 16
    per_block = (3 * n * C * C + n * C * C + 2 * n * n * C  # qkv, proj, q k^T and A v
                 + 8 * n * C * C + 2 * 5 * n * C)             # MLP, two LayerNorms
    final_norm = 5 * n * C
    head = L_PATCH * C * 3
    return patch_embed + LAYERS * per_block + final_norm + head


@pytest.mark.parametrize('kind', ['stock', 'plain'])
def test_fused_and_explicit_attention_count_the_same(kind):
    model = MODELS.build(variant_cfg(tiny_segmenter(), kind))
    model.init_weights()
    result = count_flops(model, (64, 64))
    assert result['flops']['total'] == hand_count()
    assert 'aten::scaled_dot_product_attention' not in result['unsupported_ops']


def test_reducer_cost_in_both_conventions():
    cfg = variant_cfg(tiny_segmenter(), 'reduced', dict(type='ToMe', r=4))
    model = MODELS.build(cfg)
    model.init_weights()
    result = count_flops(model, (64, 64))
    assert result['compressed'] and result['method'] == 'ToMe'
    assert result['tokens'] == [17, 13]
    counted, not_counted = result['flops_mr_counted']['total'], \
        result['flops_mr_not_counted']['total']
    # ToMe's similarity is a matmul the counter sees (not counted = total - it); the size
    # weighting is added analytically (counted = total + it)
    d = C // HEADS
    similarity = 9 * 8 * d + 7 * 6 * d
    weighting = (17 + 13) * C
    assert not_counted == result['flops']['total'] - similarity
    assert counted == result['flops']['total'] + weighting
    assert result['mr_flops'] == similarity + weighting
    assert counted < hand_count()
