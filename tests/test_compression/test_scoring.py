"""Gradient-weighted attention scoring against a brute-force reference (Mao et al., IEEE TMM
2025, arXiv 2503.23455; official ``Attention.compute_rank_attn``), and in bounded memory."""
import gc
import weakref

import pytest
import torch
import torch.nn.functional as F

import mmseg_pm  # noqa: F401
from mmseg_pm.compression import AttentionScorer
from mmseg_pm.errors import ConfigError
from mmseg_pm.models import PruneMergeViT

TINY = dict(img_size=(32, 48), patch_size=16, embed_dims=16, num_layers=3, num_heads=2,
            final_norm=True, out_indices=(2,))


def manual_forward(bb, x, leaf_layer):
    """Manual forward; the attention map of ``leaf_layer`` is an explicit autograd leaf."""
    tokens, _ = bb.patch_embed(x)
    tokens = torch.cat([bb.cls_token.expand(x.shape[0], -1, -1), tokens], 1) + bb.pos_embed
    leaf = None
    for i, layer in enumerate(bb.layers):
        mha = layer.attn.attn
        y = layer.norm1(tokens)
        b, n, c = y.shape
        h = mha.num_heads
        q, k, v = F.linear(y, mha.in_proj_weight, mha.in_proj_bias).view(
            b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) / (c // h)**0.5).softmax(-1)
        if i == leaf_layer:
            attn = leaf = attn.detach().requires_grad_(True)
        out = mha.out_proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        tokens = tokens + out
        tokens = layer.ffn(layer.norm2(tokens), identity=tokens)
    return bb.norm1(tokens), leaf


def reference_scores(bb, x, weight):
    """Per layer: |sum_{b,h,i} A * dL/dA| / (B H L) with A a leaf, CLS column dropped."""
    scores = []
    for layer in range(len(bb.layers)):
        tokens, a = manual_forward(bb, x, layer)
        (tokens[:, 1:] * weight).sum().backward()
        v = (a.detach() * a.grad).double().sum((0, 1, 2)) / (a.shape[0] * a.shape[1] *
                                                             a.shape[2])
        scores.append(v[1:].abs())
    return scores


def test_scores_equal_brute_force_reference():
    torch.manual_seed(0)
    bb = PruneMergeViT(pm_cfg=dict(mode='layer'), **TINY)
    bb.init_weights()
    bb.eval()
    batches = [torch.randn(2, 3, 32, 48) for _ in range(2)]
    weight = torch.randn(1, 6, 16)
    expected = None
    for x in batches:
        ref = reference_scores(bb, x, weight)
        expected = ref if expected is None else [a + b for a, b in zip(expected, ref)]
        bb.zero_grad()
    scorer = AttentionScorer(bb, [0, 1, 2])
    with scorer:
        for x in batches:
            out = bb(x)[0]  # (B, C, 2, 3)
            (out.flatten(2).transpose(1, 2) * weight).sum().backward()
            bb.zero_grad()
    assert not bb.attention_map_hooks  # instrumentation removed
    for i in range(3):
        got = scorer.scores[i]
        assert got.shape == (6,)
        assert (got - expected[i]).abs().max() <= 1e-6 * max(1.0, float(expected[i].abs().max()))
        assert float(got.abs().max()) > 0


def test_explicit_attention_path_matches_default():
    torch.manual_seed(0)
    bb = PruneMergeViT(**TINY)
    bb.init_weights()
    bb.eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        ref = bb(x)[0]
        bb.attention_map_hooks.update({i: lambda attn: None for i in range(3)})
        got = bb(x)[0]
    assert (ref - got).abs().max() <= 1e-5


def test_scoring_keeps_no_attention_map_alive():
    """Every iteration's attention maps are freed after its backward: a gradient hook that
    captured its own tensor would keep them alive through autograd's graph (memory growing
    with the number of scoring iterations)."""
    torch.manual_seed(0)
    bb = PruneMergeViT(pm_cfg=dict(mode='layer'), **TINY)
    bb.init_weights()
    maps = []
    scorer = AttentionScorer(bb, [0, 1, 2])
    with scorer:
        for i in range(3):
            hook = bb.attention_map_hooks[i]
            bb.attention_map_hooks[i] = (
                lambda h: lambda attn: (maps.append(weakref.ref(attn)), h(attn)))(hook)
        for _ in range(4):
            bb(torch.randn(2, 3, 32, 48))[0].sum().backward()
            bb.zero_grad()
    gc.collect()
    assert len(maps) == 12
    assert sum(ref() is not None for ref in maps) == 0
    assert all(float(s.abs().sum()) > 0 for s in scorer.scores.values())


def test_scorer_rejects_plain_backbones():
    from mmseg.models.backbones import VisionTransformer
    with pytest.raises(ConfigError, match='TokenReductionViT'):
        AttentionScorer(VisionTransformer(**TINY), [0])
