"""FLOP counting: fused attention counted exactly like the explicit path, equal to a hand count;
the reducers' own cost in both conventions."""
import pytest
import torch
from mmseg.registry import MODELS

import mmseg_pm  # noqa: F401
from mmseg_pm.analysis import count_flops
from mmseg_pm.analysis.build import variant_cfg
from tests.utils import (NUM_CLASSES, TINY_C, TINY_CROP, TINY_LAYERS, build_model,
                         compress_randomly, tiny_cfg)

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


# --------------------------------------------------------------------------------------------
# Prune-and-Merge: the tiny demo segmentor (tests.utils.tiny_cfg) against a hand count
# --------------------------------------------------------------------------------------------
N, P = (TINY_CROP // 16)**2, 1  # 16 patch tokens, 1 CLS token


def pm_hand_count(tokens_per_layer):
    """mmengine's count of the tiny Prune-and-Merge segmentor (batch 1), as (backbone, head).

    Counted: conv (patch embedding, 1x1 classifier), linear (qkv, proj, fc1, fc2), the two
    attention matmuls, layer_norm (5 FLOPs per element with affine). Not counted: softmax,
    GELU, adds, scaling of q, the reshape of the tokens to the grid.
    """
    c = TINY_C
    patch_embed = (c * 3 * 16 * 16) * N
    classifier = c * NUM_CLASSES * N
    blocks = 0
    for length in tokens_per_layer:                # P + the tokens the block runs on
        blocks += 2 * 5 * length * c               # LN1, LN2
        blocks += length * c * 3 * c               # qkv
        blocks += 2 * length * length * c          # q @ k^T and attn @ v over all heads
        blocks += length * c * c                   # out proj
        blocks += 2 * length * c * 4 * c           # MLP fc1 + fc2 (mlp_ratio 4)
    final_norm = 5 * (P + N) * c                   # after the last block (all tokens)
    return patch_embed + blocks + final_norm, classifier


def test_pm_uncompressed_equals_hand_count_and_mmengine():
    from mmengine.analysis import get_model_complexity_info
    model = build_model(tiny_cfg())
    result = count_flops(model)
    backbone, head = pm_hand_count([P + N] * TINY_LAYERS)
    assert result['input_shape'] == [1, 3, TINY_CROP, TINY_CROP]
    assert result['flops']['backbone'] == backbone
    assert result['flops']['decode_head'] == head
    assert result['flops']['total'] == backbone + head == 938400
    assert not result['compressed'] and result['units'] == []
    assert result['flops_mr_counted']['total'] == result['flops_mr_not_counted']['total'] \
        == result['flops']['total']
    # mmengine's own counter skips fused attention (scaled_dot_product_attention): exactly
    # the two attention matmuls per block are the difference
    info = get_model_complexity_info(model, inputs=(torch.randn(1, 3, TINY_CROP, TINY_CROP), ),
                                     show_table=False, show_arch=False)
    attention = TINY_LAYERS * 2 * (P + N)**2 * TINY_C
    assert info['flops'] + attention == result['flops']['total']
    assert result['params']['total'] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('representation', ['sparse', 'dense'])
def test_pm_compressed_flops_drop_by_the_expected_amount(representation):
    model = compress_randomly(build_model(tiny_cfg(representation=representation)), 0.5, 0.25)
    result = count_flops(model, structure='random')
    k, pruned = int(N * 0.5), int(N * 0.25)
    backbone, head = pm_hand_count([P + k] * TINY_LAYERS)
    full, _ = pm_hand_count([P + N] * TINY_LAYERS)
    c = TINY_C
    assert full - backbone == TINY_LAYERS * (10 * c * (N - k) + 12 * c * c * (N - k)
                                             + 2 * c * ((P + N)**2 - (P + k)**2))
    assert result['compressed'] and result['structure'] == 'random'
    assert result['method'] == 'PruneMerge' and result['representation'] == representation
    for u in result['units']:
        assert (u['N'], u['K'], u['pruned'], u['merged'], u['tokens']) == \
            (N, k, pruned, N - k - pruned, P + k)
    assert result['flops_mr_not_counted']['total'] == backbone + head
    if representation == 'sparse':
        # M / R are a scatter-add and a gather the counter does not see: merge = (N - pruned)
        # * C, restore = N * C per unit, added analytically
        mr = TINY_LAYERS * ((N - pruned) * c + N * c)
        assert result['flops']['total'] == backbone + head
    else:
        # dense M / R are matmuls the counter sees: 2 (P + K)(P + N) C per unit
        mr = TINY_LAYERS * 2 * (P + k) * (P + N) * c
        assert result['flops']['total'] == backbone + head + mr
    assert result['mr_flops'] == mr
    assert result['flops_mr_counted']['total'] == backbone + head + mr
    assert result['flops_mr_counted']['backbone'] == backbone + mr


def test_flops_report():
    from mmseg_pm.analysis import format_flops_report
    model = compress_randomly(build_model(tiny_cfg()), 0.5, 0.25)
    text = format_flops_report(count_flops(model), 'tiny + pm')
    assert text.startswith('tiny + pm\nInput shape: 3x64x64 (batch 1); one multiply-add = one')
    assert 'Token reduction: PruneMerge; structure: checkpoint; representation sparse' in text
    assert '| span | N | K | merged | pruned | tokens in span (P+K) | M/R GFLOPs |' in text
    assert '| 0 | 16 | 8 | 4 | 4 | 9 |' in text and 'Tokens entering blocks 0..1: 9, 9.' in text
