"""TokenReductionViT with every reducer: identity settings are mmseg's ViT, outputs are full
grids, gradients flow, per-image methods batch without changing any image's output."""
import pytest
import torch
from mmseg.models.backbones import VisionTransformer

import mmseg_pm  # noqa: F401
from mmseg_pm.errors import ConfigError
from mmseg_pm.models import TokenReductionViT

TINY = dict(patch_size=16, embed_dims=32, num_layers=4, num_heads=2, final_norm=True,
            norm_cfg=dict(type='LN', eps=1e-6))

IDENTITY = [
    None,
    dict(type='ToMe', r=0),
    dict(type='EViT', keep_rate=1.0, drop_blocks=(1, 2)),
    dict(type='ALGM', threshold=None, global_block=None),
    dict(type='MSTM', keep_rate=1.0, reduce_blocks=(1, 2)),
    dict(type='PruneMerge', mode='layer'),
]
REDUCING = [
    dict(type='ToMe', r=3),
    dict(type='ToMe', r=(4, -1), proportional_attention=False),
    dict(type='EViT', keep_rate=0.5, drop_blocks=(1, 2)),
    dict(type='EViT', keep_rate=0.5, drop_blocks=(1, 2), restore='fused_share'),
    dict(type='ALGM', threshold=0.0, global_block=2),
    dict(type='ALGM', threshold=0.0, global_block=2, batch_minimum=True),
    dict(type='MSTM', keep_rate=0.5, reduce_blocks=(1, 2)),
    dict(type='MSTM', keep_rate=0.5, reduce_blocks=(1, 2), metric='x', weighting='tps'),
    dict(type='MSTM', keep_rate=0.5, reduce_blocks=(1, 2), fusion='add'),
    dict(type='MSTM', keep_rate=0.5, reduce_blocks=(1,), fusion='concat'),
    dict(type='MSTM', keep_rate=0.5, reduce_blocks=(1,), fusion='cross_attn'),
    dict(type='MSTM', keep_rate=0.7, reduce_blocks=(1,), fusion='pool'),
]


def pair(token_reduction, img_size=(64, 64), **kw):
    cfg = dict(TINY, img_size=img_size, **kw)
    ref = VisionTransformer(**cfg)
    ref.init_weights()
    model = TokenReductionViT(token_reduction=token_reduction, **cfg)
    model.load_state_dict(ref.state_dict(), strict=True)  # an mmseg ViT checkpoint, strictly
    ref.eval()  # mmseg's VisionTransformer.train() returns None
    model.eval()
    return ref, model


def outputs(model, x):
    return [o[0] if isinstance(o, list) else o for o in model(x)]


@pytest.mark.parametrize('token_reduction', IDENTITY, ids=lambda c: c and c['type'])
@pytest.mark.parametrize('kw', [dict(out_indices=(1, 3)),
                                dict(with_cls_token=False, out_indices=(3, )),
                                dict(output_cls_token=True, out_indices=(0, 3))])
def test_identity_settings_reproduce_mmseg_vit(token_reduction, kw):
    if token_reduction and token_reduction['type'] in ('EViT', 'MSTM') and \
            kw.get('with_cls_token') is False:
        pytest.skip('CLS-attention methods need the CLS token')
    ref, model = pair(token_reduction, **kw)
    assert not model.is_reducing
    for size in ((64, 64), (80, 48)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            for a, b in zip(outputs(ref, x), outputs(model, x)):
                assert a.shape == b.shape
                assert (a - b).abs().max() <= 1e-5  # fused attention: float rounding only


def test_mstm_zero_fusion_with_keep_one_is_the_vit():
    ref, model = pair(dict(type='MSTM', keep_rate=1.0, reduce_blocks=(1, ), fusion='add'))
    assert model.is_reducing  # the fusion runs ...
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (model(x)[0] - ref(x)[0]).abs().max() <= 1e-5  # ... and adds exactly zero


@pytest.mark.parametrize('token_reduction', REDUCING, ids=lambda c: str(sorted(c.items())))
@pytest.mark.parametrize('img_size', [(64, 64), (64, 96)])
def test_full_grids_and_gradients(token_reduction, img_size):
    _, model = pair(token_reduction, img_size=img_size, out_indices=(1, 2, 3))
    assert model.is_reducing
    model.train()
    x = torch.randn(2, 3, *img_size)
    outs = model(x)
    for o in outs:
        assert o.shape == (2, 32, img_size[0] // 16, img_size[1] // 16)
    assert min(model.last_token_counts) < 1 + (img_size[0] // 16) * (img_size[1] // 16)
    sum(o.square().mean() for o in outs).backward()
    for name, p in model.named_parameters():
        # the fusion's branch before its zero-initialised output map has no gradient yet
        if p.requires_grad and '.fusion.' not in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize('token_reduction', [c for c in REDUCING if c['type'] == 'MSTM'
                                             and c.get('fusion')],
                         ids=lambda c: c['fusion'])
def test_gradients_reach_the_fusion(token_reduction):
    _, model = pair(token_reduction)
    model.train()
    model(torch.randn(2, 3, 64, 64))[0].square().mean().backward()
    fusion = model.reducer.fusion
    out = fusion.attn.out_proj if fusion.mode == 'cross_attn' else fusion.proj
    assert out.weight.grad is not None and float(out.weight.grad.abs().sum()) > 0


@pytest.mark.parametrize('token_reduction', [
    dict(type='ALGM', threshold=0.0, global_block=2),
    dict(type='ALGM', threshold=0.5, global_block=2),
    dict(type='ToMe', r=3), dict(type='EViT', keep_rate=0.5, drop_blocks=(1, 2)),
    dict(type='MSTM', keep_rate=0.5, reduce_blocks=(1, 2)),
], ids=lambda c: str(sorted(c.items())))
def test_a_mixed_batch_equals_each_image_alone(token_reduction):
    _, model = pair(token_reduction, out_indices=(2, 3))
    xa, xb = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64).clamp(0, 0.1)
    with torch.no_grad():
        alone = [outputs(model, x) for x in (xa, xb)]
        both = outputs(model, torch.cat([xa, xb]))
    for i in range(2):
        for a, b in zip(both, alone[i]):
            assert (a[i] - b[0]).abs().max() <= 1e-5


def test_algm_batch_minimum_depends_on_the_batch():
    _, model = pair(dict(type='ALGM', threshold=0.5, global_block=None, batch_minimum=True))
    xa, xb = torch.randn(1, 3, 64, 64), torch.zeros(1, 3, 64, 64)
    with torch.no_grad():
        model(xb)
        alone = model.last_token_counts
        model(torch.cat([xa, xb]))
        batched = model.last_token_counts
    assert batched[-1] > alone[-1]  # the random image merges less; the batch takes its count


def test_restore_outputs_false_hands_compressed_tokens_to_the_neck():
    from mmseg_pm.models import CompressedTokens, TokenReconstructNeck
    _, model = pair(dict(type='ToMe', r=3), out_indices=(1, 3))
    _, restored = pair(dict(type='ToMe', r=3), out_indices=(1, 3))
    model.restore_outputs = False
    restored.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        outs = model(x)
        assert isinstance(outs[0], CompressedTokens) and torch.is_tensor(outs[1])
        for a, b in zip(TokenReconstructNeck()(outs), restored(x)):
            assert torch.equal(a, b)


@pytest.mark.parametrize('bad,err', [
    (dict(type='ToMe', r=[1] * 9), 'r'),
    (dict(type='EViT', keep_rate=0.0, drop_blocks=(1, )), 'keep_rate'),
    (dict(type='EViT', keep_rate=0.5, drop_blocks=(7, )), 'out of range'),
    (dict(type='ALGM', threshold=0.9, local_block=2, global_block=1), 'after'),
    (dict(type='MSTM', keep_rate=0.5, reduce_blocks=(1, ), metric='queries'), 'metric'),
    (dict(type='MSTM', keep_rate=0.5, reduce_blocks=(1, ), fusion='sum'), 'fusion'),
])
def test_bad_settings_are_config_errors(bad, err):
    with pytest.raises(ConfigError, match=err):
        TokenReductionViT(token_reduction=bad, img_size=(64, 64), **TINY)


def test_cls_attention_methods_need_the_cls_token():
    with pytest.raises(ConfigError, match='with_cls_token'):
        TokenReductionViT(token_reduction=dict(type='EViT', drop_blocks=(1, )),
                          img_size=(64, 64), with_cls_token=False, **TINY)
