"""ALGM's token maths (mmseg_pm.functional.algm): local window pooling and the global step."""
import statistics

import pytest
import torch

from mmseg_pm.errors import ConfigError, StructureError
from mmseg_pm.functional.algm import algm_global_merge, algm_local_merge, window_similarity
from mmseg_pm.functional.common import compose_index, restore_tokens


def cos(u, v):
    return float(torch.nn.functional.cosine_similarity(u.double(), v.double(), dim=0))


def reference_windows(grid, w):
    h, wd = grid
    return [[(wi * w + a) * wd + wj * w + c for a in range(w) for c in range(w)]
            for wi in range(h // w) for wj in range(wd // w)]


def reference_scores(patches, grid, w):
    """One image: mean cosine similarity over the distinct pairs of each window."""
    scores = []
    for idx in reference_windows(grid, w):
        pairs = [(i, j) for k, i in enumerate(idx) for j in idx[k + 1:]]
        scores.append(statistics.mean(cos(patches[i], patches[j]) for i, j in pairs))
    return scores


def reference_local(x, grid, threshold, p, w=2, count=None):
    """One image: merge the windows scoring >= threshold (or the top ``count``), loops only."""
    windows = reference_windows(grid, w)
    scores = reference_scores(x[p:], grid, w)
    m = sum(s >= threshold for s in scores) if count is None else count
    chosen = sorted(range(len(windows)), key=lambda k: -scores[k])[:m]
    merged = {i for k in chosen for i in windows[k]}
    rest = [i for i in range(x.shape[0] - p) if i not in merged]
    rows = [x[i] for i in range(p)] + [x[p:][windows[k]].mean(0) for k in chosen]
    rows += [x[p + i] for i in rest]
    size = [1.] * p + [float(w * w)] * len(chosen) + [1.] * len(rest)
    index = [0] * (x.shape[0] - p)
    for slot, k in enumerate(chosen):
        for i in windows[k]:
            index[i] = slot
    for slot, i in enumerate(rest):
        index[i] = len(chosen) + slot
    return torch.stack(rows), torch.tensor(size), index


def reference_edges(x, size, p):
    """One image: each eligible A token's best B edge (ToMe's split, cosine on x)."""
    length = x.shape[0]
    valid = [float(size[i]) > 0 for i in range(length)]
    edges = []
    for a in range(0, length, 2):
        if a < p or not valid[a]:
            continue
        cands = [(cos(x[a], x[b]), b) for b in range(1, length, 2) if b >= p and valid[b]]
        if cands:
            edges.append((*max(cands, key=lambda t: t[0]), a))
    return sorted(edges, key=lambda e: -e[0]), valid  # (score, b, a), best first


def reference_bipartite_merge(x, size, p, edges, valid):
    length = x.shape[0]
    dest = {a: b for _, b, a in edges}
    rows = [a for a in range(0, length, 2) if valid[a] and a not in dest]
    rows += [b for b in range(1, length, 2) if valid[b]]
    groups = {row: [row] for row in rows}
    for a, b in dest.items():
        groups[b].append(a)
    out = torch.stack([sum(size[i] * x[i] for i in groups[r]) / sum(size[i] for i in groups[r])
                       for r in rows])
    new_size = torch.tensor([float(sum(size[i] for i in groups[r])) for r in rows])
    slot = {i: k for k, r in enumerate(rows) for i in groups[r]}
    return out, new_size, [slot[i] - p if i in slot else -1 for i in range(p, length)]


def reference_global(x, size, p, scale, batch_minimum=False):
    """A batch, loops only: the statistical threshold, per image or the batch-minimum rule."""
    per = [reference_edges(x[b], size[b], p) for b in range(x.shape[0])]
    stats = [(statistics.mean(e[0] for e in edges), statistics.stdev(e[0] for e in edges))
             for edges, _ in per]
    if batch_minimum:
        theta = statistics.mean(s[0] for s in stats) + statistics.mean(s[1] for s in stats) * scale
        r = min(sum(e[0] >= theta for e in edges) for edges, _ in per)
        chosen = [edges[:r] for edges, _ in per]
    else:
        chosen = [[e for e in edges if e[0] >= mu + sd * scale]
                  for (edges, _), (mu, sd) in zip(per, stats)]
    return [reference_bipartite_merge(x[b], size[b], p, chosen[b], per[b][1])
            for b in range(x.shape[0])]


E1, E2, E3 = torch.eye(3)
V = torch.tensor([1., 2., 3.])


def grid_image(windows):
    """CLS + a 4 x 4 grid of 3-d tokens, given the 4 tokens of each 2 x 2 window."""
    patches = torch.zeros(16, 3)
    for idx, tokens in zip(reference_windows((4, 4), 2), windows):
        patches[idx] = torch.stack(tokens)
    return torch.cat([torch.tensor([[9., 9., 9.]]), patches])


LOW_A = [E1, -E1, E2, -E2]  # score -1/3
LOW_B = [E3, -E3, E1, -E1]  # score -1/3
SAME = [V, V, V, V]  # score 1
NEAR = [torch.tensor(t) for t in ([1., 1., 0.], [1., 1., .1], [1., .9, 0.], [.9, 1., 0.])]


# --- window similarity ---------------------------------------------------------------------

def test_window_similarity_hand_values():
    patches = torch.stack([E1, E1, E1, E2, E1, E1, E1, E2]).unsqueeze(0)  # 2 x 4 grid
    # window 0 = patches 0, 1, 4, 5 (identical); window 1 = 2, 3, 6, 7 (E1, E2, E1, E2)
    assert torch.allclose(window_similarity(patches, (2, 4)), torch.tensor([[1., 1 / 3]]))


def test_window_similarity_against_reference():
    patches = torch.randn(2, 6 * 9, 5)
    scores = window_similarity(patches, (6, 9), window=3)
    assert scores.shape == (2, 6)
    for b in range(2):
        assert torch.allclose(scores[b], torch.tensor(reference_scores(patches[b], (6, 9), 3),
                                                      dtype=torch.float32), atol=1e-6)


def test_window_similarity_rejects_bad_grids():
    with pytest.raises(ConfigError):
        window_similarity(torch.randn(1, 6, 3), (2, 3))
    with pytest.raises(ConfigError):
        window_similarity(torch.randn(1, 4, 3), (2, 2), window=1)
    with pytest.raises(StructureError):
        window_similarity(torch.randn(1, 6, 3), (2, 2))


# --- local step -------------------------------------------------------------------------

def test_local_hand_example():
    x = grid_image([LOW_A, SAME, NEAR, LOW_B]).unsqueeze(0)
    red = algm_local_merge(x, (4, 4), 0.9)
    # windows 1 (score 1) then 2 (~0.99); then patches 0, 1, 4, 5, 10, 11, 14, 15
    assert red.index.tolist() == [[2, 3, 0, 0, 4, 5, 0, 0, 1, 1, 6, 7, 1, 1, 8, 9]]
    assert red.size.tolist() == [[1., 4., 4.] + [1.] * 8]
    rest = [0, 1, 4, 5, 10, 11, 14, 15]
    expected = torch.cat([x[0, :1], V[None], torch.stack(NEAR).mean(0, keepdim=True),
                          x[0, 1:][rest]])
    assert torch.allclose(red.x[0], expected)


def test_local_against_reference_on_random_images():
    x = torch.randn(3, 1 + 8 * 8, 4)
    x[:, 1:] += 2  # shared offset: scores spread over (-1, 1)
    scores = window_similarity(x[:, 1:], (8, 8)).flatten().sort().values
    threshold = float(scores[23] + scores[24]) / 2  # between two scores: no borderline window
    red = algm_local_merge(x, (8, 8), threshold)
    for b in range(3):
        ref_x, ref_size, ref_index = reference_local(x[b], (8, 8), threshold, 1)
        k = ref_x.shape[0]
        assert torch.allclose(red.x[b, :k], ref_x, atol=1e-6)
        assert torch.equal(red.size[b, :k], ref_size) and (red.size[b, k:] == 0).all()
        assert red.index[b].tolist() == ref_index


def test_threshold_above_one_is_the_identity():
    x = grid_image([SAME, SAME, SAME, SAME]).unsqueeze(0).repeat(2, 1, 1)
    red = algm_local_merge(x, (4, 4), 1.5)
    assert red.x is x and torch.equal(red.size, torch.ones(2, 17))
    assert red.index.tolist() == [list(range(16))] * 2


def test_local_per_image_counts_are_padded_and_match_each_image_alone():
    x = torch.stack([grid_image([LOW_A, SAME, NEAR, LOW_B]),
                     grid_image([LOW_A, LOW_B, LOW_A, SAME])])
    red = algm_local_merge(x, (4, 4), 0.9)
    assert red.x.shape == (2, 1 + 13, 3)  # 16 - 3 * 1 for image 1; image 0 has 10
    assert red.size.sum(1).tolist() == [17., 17.]
    assert (red.x[0, 11:] == 0).all() and (red.size[0, 11:] == 0).all()
    assert red.index[0].max() < 10  # padding rows are never targets
    for b, k in ((0, 11), (1, 14)):
        one = algm_local_merge(x[b:b + 1], (4, 4), 0.9)
        assert one.x.shape[1] == k
        assert torch.equal(red.x[b, :k], one.x[0]) and torch.equal(red.index[b], one.index[0])


def test_local_batch_minimum_differs_from_per_image():
    x = torch.stack([grid_image([LOW_A, SAME, NEAR, LOW_B]),
                     grid_image([LOW_A, LOW_B, LOW_A, SAME])])
    red = algm_local_merge(x, (4, 4), 0.9, batch_minimum=True)
    assert red.x.shape == (2, 1 + 13, 3) and (red.size > 0).all()  # m = min(2, 1) = 1
    for b in range(2):
        ref_x, ref_size, ref_index = reference_local(x[b], (4, 4), 0.9, 1, count=1)
        assert torch.allclose(red.x[b], ref_x) and red.index[b].tolist() == ref_index
    # image 0 alone (or per image) merges its two windows; in this batch only its best one
    alone = algm_local_merge(x[:1], (4, 4), 0.9, batch_minimum=True)
    assert alone.x.shape[1] == 11 and not torch.equal(alone.index[0], red.index[0])
    assert red.index[0].tolist() == [1, 2, 0, 0, 3, 4, 0, 0, 5, 6, 7, 8, 9, 10, 11, 12]
    # and when one image has nothing to merge, nothing merges
    x2 = torch.stack([grid_image([LOW_A, SAME, NEAR, LOW_B]),
                      grid_image([LOW_A, LOW_B, LOW_A, LOW_B])])
    assert algm_local_merge(x2, (4, 4), 0.9, batch_minimum=True).x is x2


def test_local_bad_settings():
    x = torch.randn(1, 17, 3)
    for bad in (float('nan'), float('inf'), None, '0.9'):
        with pytest.raises(ConfigError):
            algm_local_merge(x, (4, 4), bad)
    with pytest.raises(ConfigError):
        algm_local_merge(x, (4, 4), 0.9, window=3)
    with pytest.raises(StructureError):
        algm_local_merge(x, (4, 3), 0.9)


# --- global step ------------------------------------------------------------------------

@pytest.mark.parametrize('batch_minimum', [False, True])
def test_global_against_reference(batch_minimum):
    x = torch.randn(3, 1 + 21, 6)
    size = torch.randint(1, 5, (3, 22)).float()
    size[:, 0] = 1
    red = algm_global_merge(x, size, 5, batch_minimum=batch_minimum)
    refs = reference_global(x, size, 1, 1 / 5, batch_minimum)
    for b, (ref_x, ref_size, ref_index) in enumerate(refs):
        k = ref_x.shape[0]
        assert torch.allclose(red.x[b, :k], ref_x, atol=1e-6) and (red.x[b, k:] == 0).all()
        assert torch.equal(red.size[b, :k], ref_size) and (red.size[b, k:] == 0).all()
        assert red.index[b].tolist() == ref_index
    if batch_minimum:
        assert len({ref[0].shape[0] for ref in refs}) == 1


def test_global_std_scale_default_and_identity():
    x = torch.randn(2, 1 + 16, 5)
    a = algm_global_merge(x, None, 4)
    b = algm_global_merge(x, None, 1, std_scale=0.25)
    assert torch.equal(a.x, b.x) and torch.equal(a.index, b.index)
    assert a.size[:, 1:].sum(1).tolist() == [16., 16.]
    none = algm_global_merge(x, None, 5, std_scale=1e6)
    assert none.x is x and none.index.tolist() == [list(range(16))] * 2


def test_global_batch_of_two_equals_each_image_alone_per_image_mode():
    x = torch.randn(2, 1 + 18, 4)
    red = algm_global_merge(x, None, 5)
    for b in range(2):
        one = algm_global_merge(x[b:b + 1], None, 5)
        k = one.x.shape[1]
        assert torch.allclose(red.x[b, :k], one.x[0]) and (red.size[b, k:] == 0).all()
        assert torch.equal(red.index[b], one.index[0])


def padded_pair():
    """Two images whose local steps merge 3 and 1 windows (then padded to 13 patch rows)."""
    torch.manual_seed(3)
    x = torch.randn(2, 1 + 16, 3)
    for b, windows in ((0, (0, 1, 3)), (1, (2,))):
        for w in windows:
            x[b, 1:][reference_windows((4, 4), 2)[w]] = torch.randn(3)
    return x


def test_global_step_after_local_step_with_padding():
    x = padded_pair()
    loc = algm_local_merge(x, (4, 4), 0.99)
    assert loc.x.shape == (2, 1 + 13, 3) and loc.size[0, 8:].tolist() == [0.] * 6
    glob = algm_global_merge(loc.x, loc.size, 5)
    assert glob.size[:, 1:].sum(1).tolist() == [16., 16.] and (glob.size[:, 0] == 1).all()
    assert glob.index[0, 7:].tolist() == [-1] * 6  # the local step's padding rows
    for b in range(2):
        one_loc = algm_local_merge(x[b:b + 1], (4, 4), 0.99)
        one = algm_global_merge(one_loc.x, one_loc.size, 5)
        k = one.x.shape[1]
        assert torch.allclose(glob.x[b, :k], one.x[0], atol=1e-6)
        assert torch.equal(glob.size[b, :k], one.size[0]) and (glob.size[b, k:] == 0).all()
        n1 = one_loc.x.shape[1] - 1
        assert torch.equal(glob.index[b, :n1], one.index[0])
        ref_x, ref_size, ref_index = reference_global(one_loc.x, one_loc.size, 1, 1 / 5)[0]
        assert torch.allclose(one.x[0], ref_x, atol=1e-6) and one.index[0].tolist() == ref_index
    # both steps restored: every patch gets the mean of the original patches of its group
    total = compose_index(loc.index, glob.index)
    assert total.min() >= 0
    y = restore_tokens(glob.x, total, 1)
    for b in range(2):
        for j in range(16):
            group = x[b, 1:][total[b] == total[b, j]]
            assert torch.allclose(y[b, 1 + j], group.mean(0), atol=1e-6)
    # step by step with the shortcuts: full lengths at each step
    mid = restore_tokens(glob.x, glob.index, 1, shortcut=loc.x)
    assert mid.shape == loc.x.shape and torch.allclose(restore_tokens(mid, loc.index, 1), y)


def test_global_batch_minimum_uses_batch_statistics():
    x = padded_pair()
    loc = algm_local_merge(x, (4, 4), 0.99)
    per_image = algm_global_merge(loc.x, loc.size, 5)
    shared = algm_global_merge(loc.x, loc.size, 5, batch_minimum=True)
    merges = [int((shared.size[b] > 0).sum()) for b in range(2)]
    assert (loc.size > 0).sum(1).sub(torch.tensor(merges)).unique().numel() == 1  # same r
    refs = reference_global(loc.x, loc.size, 1, 1 / 5, batch_minimum=True)
    for b, (ref_x, ref_size, ref_index) in enumerate(refs):
        k = ref_x.shape[0]
        assert torch.allclose(shared.x[b, :k], ref_x, atol=1e-6)
        assert shared.index[b].tolist() == ref_index
    assert not torch.equal(per_image.index, shared.index)


def test_gradients_reach_x_through_both_steps():
    x = padded_pair().requires_grad_(True)
    loc = algm_local_merge(x, (4, 4), 0.99)
    glob = algm_global_merge(loc.x, loc.size, 5)
    (glob.x * torch.randn_like(glob.x)).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad.abs().sum(-1) > 0).all()


def test_global_bad_settings():
    x = torch.randn(1, 9, 3)
    for kwargs in (dict(layer_number=0), dict(layer_number=2.0), dict(layer_number=True),
                   dict(layer_number=5, std_scale=float('nan')),
                   dict(layer_number=5, num_prefix=2)):
        with pytest.raises(ConfigError):
            algm_global_merge(x, None, **kwargs)
    with pytest.raises(StructureError):
        algm_global_merge(x, torch.ones(1, 8), 5)
