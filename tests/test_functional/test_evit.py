"""EViT's token maths (mmseg_pm.functional.evit)."""
import pytest
import torch

from mmseg_pm.errors import ConfigError, StructureError
from mmseg_pm.functional.common import restore_tokens
from mmseg_pm.functional.evit import evit_num_keep, evit_select


def test_num_keep_is_ceil():
    assert evit_num_keep(1024, 0.61) == 625
    assert evit_num_keep(196, 0.7) == 138
    assert evit_num_keep(5, 0.6) == 3
    assert evit_num_keep(5, 1.0) == 5
    assert evit_num_keep(7, 0.01) == 1
    # the fused token counts at the next step: 1024 -> 717 kept + 1 fused -> ceil(0.7 * 718)
    assert evit_num_keep(717 + 1, 0.7) == 503


@pytest.mark.parametrize('rate', [0, 1.5, -0.1, float('nan'), float('inf')])
def test_num_keep_rejects_bad_rates(rate):
    with pytest.raises(ConfigError):
        evit_num_keep(10, rate)


def test_hand_example():
    x = torch.arange(6.).view(1, 6, 1) * torch.tensor([1., 10.])  # CLS + 5 patches
    cls_attn = torch.tensor([[.1, .4, .05, .3, .15]])
    red = evit_select(x, cls_attn, 0.6)
    # k = 3, kept by decreasing attention: patches 1, 3, 4 (rows 2, 4, 5)
    assert red.index.tolist() == [[-1, 0, -1, 1, 2]] and red.size is None
    fused = .1 * x[0, 1] + .05 * x[0, 3]  # not renormalised
    expected = torch.stack([x[0, 0], x[0, 2], x[0, 4], x[0, 5], fused])
    assert torch.allclose(red.x[0], expected)
    plain = evit_select(x, cls_attn, 0.6, fuse=False)
    assert torch.equal(plain.x[0], expected[:4]) and torch.equal(plain.index, red.index)


def test_keep_rate_one_is_the_identity():
    x = torch.randn(2, 9, 4)
    red = evit_select(x, torch.rand(2, 8), 1.0)
    assert red.x is x and red.size is None
    assert red.index.tolist() == [list(range(8))] * 2
    # ceil(0.9 * 8) = 8: also nothing to do, no fused token
    assert evit_select(x, torch.rand(2, 8), 0.9).x is x


def test_prefix_kept_and_restore_gives_back_the_input():
    x = torch.randn(2, 1 + 12, 5)
    cls_attn = torch.rand(2, 12).softmax(-1)
    red = evit_select(x, cls_attn, 0.5)
    assert red.x.shape == (2, 1 + 6 + 1, 5) and torch.equal(red.x[:, 0], x[:, 0])
    assert (red.index >= 0).sum(1).tolist() == [6, 6]
    # kept tokens are unchanged, dropped ones come from the shortcut: restoring is exact
    y = restore_tokens(red.x, red.index, 1, shortcut=x)
    assert torch.equal(y, x)
    # each kept slot points at the kept copy of its token
    for b in range(2):
        for j in range(12):
            k = int(red.index[b, j])
            if k >= 0:
                assert torch.equal(red.x[b, 1 + k], x[b, 1 + j])


def test_kept_order_follows_the_score_and_matches_a_reference():
    x = torch.randn(3, 1 + 10, 4)
    cls_attn = torch.rand(3, 10)
    red = evit_select(x, cls_attn, 0.7)
    for b in range(3):
        ranked = sorted(range(10), key=lambda j: -float(cls_attn[b, j]))
        kept, rest = ranked[:7], ranked[7:]
        expected = [x[b, 0]] + [x[b, 1 + j] for j in kept]
        expected.append(sum(cls_attn[b, j] * x[b, 1 + j] for j in rest))
        assert torch.allclose(red.x[b], torch.stack(expected), atol=1e-6)
        assert red.index[b].tolist() == [kept.index(j) if j in kept else -1 for j in range(10)]


def test_the_fused_token_is_a_candidate_at_the_next_step():
    x = torch.randn(1, 1 + 10, 3)
    first = evit_select(x, torch.rand(1, 10), 0.5)  # 5 kept + 1 fused
    attn = torch.tensor([[0., 0., 0., 0., 0., 1.]])  # the fused token is the most attentive
    second = evit_select(first.x, attn, 0.5)  # ceil(0.5 * 6) = 3
    assert second.x.shape == (1, 1 + 3 + 1, 3)
    assert second.index[0, 5] == 0 and torch.equal(second.x[0, 1], first.x[0, 6])


def test_batch_of_two_equals_each_image_alone():
    x = torch.randn(2, 1 + 9, 4)
    cls_attn = torch.rand(2, 9)
    red = evit_select(x, cls_attn, 0.4)
    for b in range(2):
        one = evit_select(x[b:b + 1], cls_attn[b:b + 1], 0.4)
        assert torch.equal(red.x[b:b + 1], one.x) and torch.equal(red.index[b:b + 1], one.index)


def test_no_prefix():
    x = torch.randn(1, 4, 2)
    red = evit_select(x, torch.tensor([[.1, .2, .3, .4]]), 0.5, num_prefix=0)
    assert red.index.tolist() == [[-1, -1, 1, 0]]
    assert torch.allclose(red.x[0], torch.stack([x[0, 3], x[0, 2], .1 * x[0, 0] + .2 * x[0, 1]]))


def test_gradients_reach_x_and_the_fusion_weights():
    x = torch.randn(2, 1 + 8, 4, requires_grad=True)
    cls_attn = torch.rand(2, 8, requires_grad=True)
    red = evit_select(x, cls_attn, 0.5)
    (red.x * torch.randn_like(red.x)).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad.abs().sum(-1) > 0).all()
    fused = red.index < 0
    assert (cls_attn.grad[fused] != 0).all() and (cls_attn.grad[~fused] == 0).all()


def test_bad_inputs():
    x = torch.randn(2, 9, 4)
    with pytest.raises(StructureError):
        evit_select(x, torch.rand(2, 9), 0.5)
    with pytest.raises(StructureError):
        evit_select(x[0], torch.rand(8), 0.5)
    with pytest.raises(ConfigError):
        evit_select(x, torch.rand(2, 8), 0.0)
    with pytest.raises(ConfigError):
        evit_select(x, torch.rand(2, 8), 0.5, num_prefix=-1)
