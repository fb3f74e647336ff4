"""ToMe's token maths (mmseg_pm.functional.tome) against hand results and a slow reference."""
import pytest
import torch

from mmseg_pm.errors import ConfigError, StructureError
from mmseg_pm.functional.common import restore_tokens
from mmseg_pm.functional.tome import (Matching, bipartite_soft_matching, merge_weighted,
                                      parse_r, tome_merge)


def reference_tome(x, metric, size, r, p):
    """One image, plain loops: ToMe's matching and size-weighted merge, written out."""
    length = x.shape[0]
    valid = [float(size[i]) > 0 for i in range(length)]
    unit = torch.nn.functional.normalize(metric.double(), dim=-1)
    set_a = [i for i in range(0, length, 2)]
    set_b = [i for i in range(1, length, 2)]
    edges = []
    for a in set_a:
        if a < p or not valid[a]:
            continue
        cands = [(float(unit[a] @ unit[b]), b) for b in set_b if b >= p and valid[b]]
        if cands:
            score, b = max(cands, key=lambda t: t[0])
            edges.append((score, a, b))
    edges.sort(key=lambda e: -e[0])
    dest = {a: b for _, a, b in edges[:r]}
    rows = [a for a in set_a if a not in dest and valid[a]] + [b for b in set_b if valid[b]]
    groups = {row: [row] for row in rows}
    for a, b in dest.items():
        groups[b].append(a)
    out = torch.stack([sum(size[i] * x[i] for i in groups[row]) / sum(size[i] for i in groups[row])
                       for row in rows])
    new_size = torch.tensor([float(sum(size[i] for i in groups[row])) for row in rows])
    slot = {i: k for k, row in enumerate(rows) for i in groups[row]}
    index = [slot[i] - p if i in slot else -1 for i in range(p, length)]
    return out, new_size, index


def group_means(x, size, index, p):
    """Size-weighted mean of the input patches that share an index (the restore target)."""
    out = torch.empty_like(x[:, p:])
    for b in range(x.shape[0]):
        for j in range(index.shape[1]):
            members = index[b] == index[b, j]
            w = size[b, p:][members][:, None]
            out[b, j] = (w * x[b, p:][members]).sum(0) / w.sum()
    return out


# --- schedules -----------------------------------------------------------------------------

def test_parse_r_constant_schedule_and_list():
    assert parse_r(13, 12) == [13] * 12
    assert parse_r(0, 3) == [0, 0, 0]
    assert parse_r([5, 4, 3], 5) == [5, 4, 3, 0, 0]
    assert parse_r([], 2) == [0, 0]


def test_parse_r_inflection_schedules():
    assert parse_r((51, -1), 12) == [102, 92, 83, 74, 64, 55, 46, 37, 27, 18, 9, 0]
    assert parse_r((10, 1), 5) == [0, 5, 10, 15, 20]
    assert parse_r((7, 0), 4) == [7, 7, 7, 7]
    # truncation: the sum falls short of r * L
    assert sum(parse_r((51, -1), 12)) == 607 < 51 * 12
    # phi read as a decimal: floor(10 * 0.1) = 1, not 0 (10 * (1 - 0.9) = 0.9999999999999998)
    assert parse_r((10, 0.9), 2) == [1, 19]
    assert parse_r((4, -1), 1) == [8]


@pytest.mark.parametrize('bad', [-1, (5, 2.0), (5, float('nan')), (-1, 0.0), (5,), [1, -1],
                                 [1, 2, 3, 4], 2.5, 'r', [1.5], True])
def test_parse_r_rejects_bad_schedules(bad):
    with pytest.raises(ConfigError):
        parse_r(bad, 3)


def test_parse_r_rejects_bad_layer_count():
    with pytest.raises(ConfigError):
        parse_r(1, 0)


# --- matching and merging ----------------------------------------------------------------------

def hand_example():
    """P = 1, n = 6: A = {0, 2, 4, 6}, B = {1, 3, 5}; the edges are 2->1 (0.995), 4->3 (0.981)
    and 6->5 (0.894); x holds each row's position, sizes are given."""
    metric = torch.tensor([[[1., 0.], [1., 0.], [1., .1], [0., 1.], [.2, 1.], [-1., 0.],
                            [-1., .5]]])
    x = torch.arange(7.).view(1, 7, 1).repeat(1, 1, 3)
    size = torch.tensor([[1., 1., 3., 1., 1., 1., 2.]])
    return x, metric, size


def test_hand_example_matching():
    x, metric, size = hand_example()
    m = bipartite_soft_matching(metric, 2, 1)
    assert isinstance(m, Matching)
    assert m.src.tolist() == [[2, 4]] and m.dst.tolist() == [[1, 3]]
    # new order [0, 6 | 1, 3, 5]
    assert m.slot.tolist() == [[0, 2, 2, 3, 3, 4, 1]] and m.num_out == 5


def test_hand_example_merge():
    x, metric, size = hand_example()
    red = tome_merge(x, metric, size, 2, 1)
    assert red.index.tolist() == [[1, 1, 2, 2, 3, 0]]
    assert red.size.tolist() == [[1., 2., 4., 2., 1.]]
    expected = torch.tensor([0., 6., (1 * 1 + 3 * 2) / 4, (3 + 4) / 2, 5.])
    assert torch.allclose(red.x[0, :, 0], expected)
    # merge_weighted gives the same from the matching alone
    out, new_size = merge_weighted(x, size, bipartite_soft_matching(metric, 2, 1))
    assert torch.equal(out, red.x) and torch.equal(new_size, red.size)
    # r = 3 also merges 6 -> 5; the order is then [0 | 1, 3, 5]
    red3 = tome_merge(x, metric, size, 3, 1)
    assert red3.index.tolist() == [[0, 0, 1, 1, 2, 2]]
    assert red3.size.tolist() == [[1., 4., 2., 3.]]


@pytest.mark.parametrize('p,n,r', [(1, 16, 5), (0, 15, 4), (1, 9, 100), (0, 7, 100)])
def test_against_reference_loop(p, n, r):
    x = torch.randn(3, p + n, 6)
    metric = torch.randn(3, p + n, 5)
    size = torch.randint(1, 4, (3, p + n)).float()
    size[:, :p] = 1
    red = tome_merge(x, metric, size, r, p)
    for b in range(3):
        ref_x, ref_size, ref_index = reference_tome(x[b], metric[b], size[b], r, p)
        assert torch.allclose(red.x[b], ref_x.float(), atol=1e-6)
        assert torch.equal(red.size[b], ref_size)
        assert red.index[b].tolist() == ref_index


def test_r_is_clipped_to_the_eligible_a_tokens():
    x = torch.randn(2, 1 + 9, 4)
    red = tome_merge(x, x, None, 1000, 1)
    assert red.x.shape == (2, 1 + 9 - 4, 4)  # floor(9 / 2) sources
    red = tome_merge(x[:, 1:], x[:, 1:], None, 1000, 0)
    assert red.x.shape == (2, 9 - 5, 4)  # ceil(9 / 2) sources without a prefix
    assert tome_merge(x[:, :2], x[:, :2], None, 3, 1).x.shape == (2, 2, 4)  # no B patch token


def test_r_zero_is_the_identity():
    x = torch.randn(2, 11, 4)
    size = torch.rand(2, 11) + 1
    red = tome_merge(x, torch.randn(2, 11, 3), size, 0, 1)
    assert red.x is x and red.size is size
    assert red.index.tolist() == [list(range(10))] * 2
    red = tome_merge(x, x, None, 0, 1)
    assert red.x is x and torch.equal(red.size, torch.ones(2, 11))


def test_prefix_kept_sizes_sum_and_restore_gives_group_values():
    x = torch.randn(2, 1 + 12, 5)
    red = tome_merge(x, torch.randn(2, 13, 4), None, 5, 1)
    assert torch.equal(red.x[:, 0], x[:, 0]) and red.size[:, 0].tolist() == [1., 1.]
    assert red.size[:, 1:].sum(1).tolist() == [12., 12.]
    assert red.index.min() >= 0 and red.index.max() < red.x.shape[1] - 1
    y = restore_tokens(red.x, red.index, 1, shortcut=x)
    assert y.shape == x.shape and torch.equal(y[:, 0], x[:, 0])
    assert torch.allclose(y[:, 1:], group_means(x, torch.ones(2, 13), red.index, 1), atol=1e-6)


def test_repeated_steps_keep_the_patch_mass():
    x = torch.randn(2, 1 + 16, 4)
    size = None
    for r in (4, 3, 2):
        red = tome_merge(x, x, size, r, 1)
        x, size = red.x, red.size
        assert size[:, 1:].sum(1).tolist() == [16., 16.]
    assert x.shape == (2, 1 + 16 - 9, 4)


def test_batch_of_two_equals_each_image_alone():
    x = torch.randn(2, 1 + 14, 6)
    metric = torch.randn(2, 1 + 14, 4)
    size = torch.randint(1, 5, (2, 15)).float()
    red = tome_merge(x, metric, size, 4, 1)
    for b in range(2):
        one = tome_merge(x[b:b + 1], metric[b:b + 1], size[b:b + 1], 4, 1)
        assert torch.allclose(red.x[b:b + 1], one.x) and torch.equal(red.size[b:b + 1], one.size)
        assert torch.equal(red.index[b:b + 1], one.index)


def test_exact_duplicates_split_across_a_and_b_merge_first():
    torch.manual_seed(1)
    x = torch.randn(1, 1 + 12, 16)
    # patch pairs (3, 4) and (9, 10): the A member (even position) copies the B member
    x[:, 4] = x[:, 3]
    x[:, 10] = x[:, 9]
    m = bipartite_soft_matching(x, 2, 1)
    assert sorted(zip(m.src[0].tolist(), m.dst[0].tolist())) == [(4, 3), (10, 9)]
    red = tome_merge(x, x, None, 2, 1)
    y = restore_tokens(red.x, red.index, 1, shortcut=x)
    assert torch.allclose(y, x, atol=1e-6)  # merging duplicates is lossless
    assert red.size[0].tolist().count(2.) == 2


def test_all_patch_tokens_in_duplicate_pairs_restore_losslessly():
    pairs = torch.randn(2, 5, 8)
    x = torch.cat([torch.randn(2, 1, 8), pairs.repeat_interleave(2, dim=1)], dim=1)  # P + 10
    red = tome_merge(x, x, None, 5, 1)
    assert red.x.shape == (2, 6, 8) and (red.size[:, 1:] == 2).all()
    assert torch.allclose(restore_tokens(red.x, red.index, 1, shortcut=x), x, atol=1e-6)


def test_padding_rows_are_never_merged():
    x = torch.randn(2, 1 + 10, 4)
    size = torch.ones(2, 11)
    x[1, 8:] = 0
    size[1, 8:] = 0  # image 1 has 7 patch tokens and 3 padding rows
    red = tome_merge(x, x, size, 3, 1)
    alone = tome_merge(x[1:, :8], x[1:, :8], size[1:, :8], 3, 1)
    k = alone.x.shape[1]
    assert torch.allclose(red.x[1, :k], alone.x[0]) and torch.equal(red.size[1, :k], alone.size[0])
    assert (red.x[1, k:] == 0).all() and (red.size[1, k:] == 0).all()
    assert red.index[1, :7].tolist() == alone.index[0].tolist()
    assert red.index[1, 7:].tolist() == [-1, -1, -1]
    assert red.size[:, 1:].sum(1).tolist() == [10., 7.]


def test_gradients_reach_x_but_not_the_metric():
    x = torch.randn(2, 1 + 10, 4, requires_grad=True)
    metric = torch.randn(2, 11, 3, requires_grad=True)
    red = tome_merge(x, metric, None, 4, 1)
    (red.x * torch.randn_like(red.x)).sum().backward()
    assert metric.grad is None
    assert torch.isfinite(x.grad).all() and (x.grad.abs().sum(-1) > 0).all()


def test_bad_inputs():
    x = torch.randn(2, 9, 4)
    with pytest.raises(ConfigError):
        tome_merge(x, x, None, -1, 1)
    with pytest.raises(ConfigError):
        tome_merge(x, x, None, 1.5, 1)
    with pytest.raises(ConfigError):
        tome_merge(x, x, None, 1, 2)
    with pytest.raises(StructureError):
        tome_merge(x, x[:, :8], None, 1, 1)
    with pytest.raises(StructureError):
        tome_merge(x, x, torch.ones(2, 8), 1, 1)
    with pytest.raises(StructureError):
        merge_weighted(x[:, :8], None, bipartite_soft_matching(x, 1, 1))
