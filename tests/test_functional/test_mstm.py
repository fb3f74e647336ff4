"""MSTM's token maths (mmseg_pm.functional.mstm), a reconstruction: see the module docstring."""
import math

import pytest
import torch

from mmseg_pm.errors import ConfigError, StructureError
from mmseg_pm.functional.common import compose_index, restore_tokens
from mmseg_pm.functional.mstm import MSTM_WEIGHTINGS, mstm_merge, mstm_num_keep


def cos(u, v):
    return float(torch.nn.functional.cosine_similarity(u.double(), v.double(), dim=0))


def reference_mstm(x, importance, metric, size, keep_rate, p, weighting):
    """One image without padding, loops only."""
    n = x.shape[0] - p
    k = mstm_num_keep(n, keep_rate)
    crucial = sorted(sorted(range(n), key=lambda j: -float(importance[j]))[:k])
    slot = {}
    for j in range(n):
        if j in crucial:
            slot[j] = crucial.index(j)
        else:
            sims = [cos(metric[j], metric[c]) for c in crucial]
            slot[j] = sims.index(max(sims))
    rows, sizes = [x[i] for i in range(p)], [float(size[i]) for i in range(p)]
    for s, c in enumerate(crucial):
        members = [j for j in range(n) if slot[j] == s]
        if weighting == 'size':
            w = [float(size[p + j]) for j in members]
        elif weighting == 'mean':
            w = [1.] * len(members)
        elif weighting == 'importance':
            w = [float(importance[j]) for j in members]
        else:
            w = [math.e if j == c else math.exp(cos(metric[j], metric[c])) for j in members]
        rows.append(sum(wi * x[p + j].double() for wi, j in zip(w, members)) / sum(w))
        sizes.append(sum(float(size[p + j]) for j in members))
    return torch.stack([r.float() for r in rows]), torch.tensor(sizes), [slot[j] for j in range(n)]


def hand_example():
    """P = 1, n = 6: crucial (keep 0.5) = patches 0, 2, 4; 1 -> 0, 3 -> 2, 5 -> 4."""
    x = torch.arange(7.).view(1, 7, 1).repeat(1, 1, 2)
    importance = torch.tensor([[.9, .1, .5, .2, .8, .3]])
    metric = torch.tensor([[[1., 0.], [1., .2], [0., 1.], [.1, 1.], [-1., 0.], [-1., -.3]]])
    size = torch.tensor([[1., 1., 3., 2., 1., 1., 1.]])
    return x, importance, metric, size


def test_num_keep():
    assert mstm_num_keep(196, 0.7) == 138 and mstm_num_keep(138, 0.7) == 97
    assert mstm_num_keep(1024, 0.7) == 717 and mstm_num_keep(4, 1) == 4
    with pytest.raises(ConfigError):
        mstm_num_keep(10, 0)


def test_hand_example_every_weighting():
    x, importance, metric, size = hand_example()
    c01, c23, c45 = cos(metric[0, 1], metric[0, 0]), cos(metric[0, 3], metric[0, 2]), cos(
        metric[0, 5], metric[0, 4])
    e = math.e
    expected = {
        'size': [7 / 4, (2 * 3 + 4) / 3, 5.5],
        'mean': [1.5, 3.5, 5.5],
        'importance': [(.9 + .1 * 2) / 1., (.5 * 3 + .2 * 4) / .7, (.8 * 5 + .3 * 6) / 1.1],
        'tps': [(e + math.exp(c01) * 2) / (e + math.exp(c01)),
                (e * 3 + math.exp(c23) * 4) / (e + math.exp(c23)),
                (e * 5 + math.exp(c45) * 6) / (e + math.exp(c45))],
    }
    for weighting in MSTM_WEIGHTINGS:
        red = mstm_merge(x, importance, metric, size, 0.5, weighting=weighting)
        assert red.index.tolist() == [[0, 0, 1, 1, 2, 2]]
        assert red.size.tolist() == [[1., 4., 3., 2.]]
        assert torch.allclose(red.x[0, :, 0], torch.tensor([0.] + expected[weighting]))


@pytest.mark.parametrize('weighting', MSTM_WEIGHTINGS)
def test_against_reference_loop(weighting):
    x = torch.randn(3, 1 + 13, 4)
    importance = torch.rand(3, 13)
    metric = torch.randn(3, 13, 5)
    size = torch.randint(1, 4, (3, 14)).float()
    size[:, 0] = 1
    red = mstm_merge(x, importance, metric, size, 0.6, weighting=weighting)
    assert red.x.shape == (3, 1 + 8, 4)  # ceil(0.6 * 13) crucial tokens
    for b in range(3):
        ref_x, ref_size, ref_index = reference_mstm(x[b], importance[b], metric[b], size[b],
                                                    0.6, 1, weighting)
        assert torch.allclose(red.x[b], ref_x, atol=1e-5)
        assert torch.equal(red.size[b], ref_size) and red.index[b].tolist() == ref_index


def test_keep_rate_one_is_the_identity():
    x = torch.randn(2, 1 + 6, 3)
    red = mstm_merge(x, torch.rand(2, 6), torch.randn(2, 6, 2), None, 1.0)
    assert red.x is x and torch.equal(red.size, torch.ones(2, 7))
    assert red.index.tolist() == [list(range(6))] * 2


def test_prefix_kept_sizes_sum_and_restore_gives_group_values():
    x = torch.randn(2, 1 + 10, 4)
    size = torch.randint(1, 3, (2, 11)).float()
    size[:, 0] = 1
    red = mstm_merge(x, torch.rand(2, 10), x[:, 1:], size, 0.3)
    assert torch.equal(red.x[:, 0], x[:, 0])
    assert torch.equal(red.size[:, 1:].sum(1), size[:, 1:].sum(1))
    assert red.index.min() >= 0 and red.index.max() < 4  # none dropped, K = 4
    y = restore_tokens(red.x, red.index, 1, shortcut=x)
    assert y.shape == x.shape
    for b in range(2):
        for j in range(10):
            members = red.index[b] == red.index[b, j]
            w = size[b, 1:][members][:, None]
            assert torch.allclose(y[b, 1 + j], (w * x[b, 1:][members]).sum(0) / w.sum(),
                                  atol=1e-6)


def test_crucial_tokens_keep_their_original_order():
    x = torch.randn(1, 1 + 8, 3)
    importance = torch.tensor([[.1, .9, .2, .8, .3, .7, .4, .6]])
    red = mstm_merge(x, importance, x[:, 1:], None, 0.5, weighting='mean')
    crucial = [1, 3, 5, 7]
    assert [int(red.index[0, j]) for j in crucial] == [0, 1, 2, 3]


def test_two_stages_of_size_weighting_equal_one_mean_of_the_patches():
    x0 = torch.randn(2, 1 + 12, 3)
    first = mstm_merge(x0, torch.rand(2, 12), x0[:, 1:], None, 0.7)
    second = mstm_merge(first.x, torch.rand(2, 9), first.x[:, 1:], first.size, 0.5)
    assert second.x.shape == (2, 1 + 5, 3) and second.size[:, 1:].sum(1).tolist() == [12.] * 2
    total = compose_index(first.index, second.index)
    for b in range(2):
        for k in range(5):
            group = x0[b, 1:][total[b] == k]
            assert group.shape[0] == second.size[b, 1 + k]
            assert torch.allclose(second.x[b, 1 + k], group.mean(0), atol=1e-6)


def test_batch_of_two_equals_each_image_alone():
    x = torch.randn(2, 1 + 9, 4)
    importance, metric = torch.rand(2, 9), torch.randn(2, 9, 3)
    red = mstm_merge(x, importance, metric, None, 0.5, weighting='tps')
    for b in range(2):
        one = mstm_merge(x[b:b + 1], importance[b:b + 1], metric[b:b + 1], None, 0.5,
                         weighting='tps')
        assert torch.allclose(red.x[b:b + 1], one.x) and torch.equal(red.index[b:b + 1], one.index)


def test_padded_input_matches_each_image_alone():
    x = torch.randn(2, 1 + 10, 4)
    size = torch.ones(2, 11)
    x[1, 7:] = 0
    size[1, 7:] = 0  # image 1: 6 patch tokens and 4 padding rows
    importance, metric = torch.rand(2, 10), torch.randn(2, 10, 3)
    importance[1, 6:] = 5.  # padding is never crucial, whatever its score
    red = mstm_merge(x, importance, metric, size, 0.5)
    assert red.x.shape == (2, 1 + 5, 4)  # ceil(0.5 * 10) and ceil(0.5 * 6) = 3, padded
    assert (red.x[1, 4:] == 0).all() and red.size[1, 4:].tolist() == [0., 0.]
    assert red.index[1, 6:].tolist() == [-1] * 4 and red.size[:, 1:].sum(1).tolist() == [10., 6.]
    alone = mstm_merge(x[1:, :7], importance[1:, :6], metric[1:, :6], size[1:, :7], 0.5)
    assert torch.allclose(red.x[1, :4], alone.x[0]) and red.index[1, :6].tolist() == \
        alone.index[0].tolist()


def test_gradients_reach_x_and_the_weights_only():
    for weighting in MSTM_WEIGHTINGS:
        x = torch.randn(2, 1 + 8, 4, requires_grad=True)
        importance = torch.rand(2, 8, requires_grad=True)
        metric = torch.randn(2, 8, 3, requires_grad=True)
        red = mstm_merge(x, importance, metric, None, 0.5, weighting=weighting)
        (red.x * torch.randn_like(red.x)).sum().backward()
        assert torch.isfinite(x.grad).all() and (x.grad.abs().sum(-1) > 0).all()
        assert (importance.grad is not None) == (weighting == 'importance')
        assert (metric.grad is not None) == (weighting == 'tps')


def test_bad_inputs():
    x = torch.randn(2, 7, 3)
    imp, metric = torch.rand(2, 6), torch.randn(2, 6, 2)
    with pytest.raises(ConfigError):
        mstm_merge(x, imp, metric, None, 0.5, weighting='max')
    with pytest.raises(ConfigError):
        mstm_merge(x, imp, metric, None, 1.5)
    with pytest.raises(ConfigError):
        mstm_merge(x, imp, metric, None, float('nan'))
    with pytest.raises(StructureError):
        mstm_merge(x, imp[:, :5], metric, None, 0.5)
    with pytest.raises(StructureError):
        mstm_merge(x, imp, metric[:, :5], None, 0.5)
    with pytest.raises(StructureError):
        mstm_merge(x, imp, metric, torch.ones(2, 6), 0.5)
    with pytest.raises(ValueError):
        mstm_merge(x, -imp, metric, None, 0.5, weighting='importance')
