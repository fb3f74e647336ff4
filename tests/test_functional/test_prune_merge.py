import pytest
import torch

from mmseg_pm.functional import prune_merge as pm
from mmseg_pm.functional import prune_merge_dense as pmd
from mmseg_pm.errors import StructureError as PMStructureError
from mmseg_pm.functional.prune_merge import PMStructure


def test_merge_to_center_runs_official_row_clip():
    # 4x4 grid, centers 1, 3, 10: run 0 = [0, 2), run 1 clipped at row end of 3 -> but the
    # official off-by-one puts patch 3 (last column) on row 1, so run 1 = [2, 7)
    assign = pm.merge_to_center_assign(torch.tensor([1, 3, 10]), (4, 4), True)
    assert assign.tolist() == [0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    fixed = pm.merge_to_center_assign(torch.tensor([1, 3, 10]), (4, 4), False)
    assert fixed.tolist() == [0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]


def test_merge_to_center_non_square_grid():
    # 2 rows x 5 cols; centers 0 and 7: midpoint ceil(7/2)=4 stays in row 0
    assign = pm.merge_to_center_assign(torch.tensor([0, 7]), (2, 5), False)
    assert assign.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    # center 2 in row 0, next center 9: midpoint 6 is in row 1 -> clipped at 5
    assign = pm.merge_to_center_assign(torch.tensor([2, 9]), (2, 5), False)
    assert assign.tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]


def _random_structure(grid=(4, 6), keep=0.4, prune=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(grid[0] * grid[1], generator=g)
    return pm.structure_from_scores(scores, grid, keep, prune), scores


def test_build_structure_weights_and_counts():
    s, scores = _random_structure()
    n = 24
    assert s.num_groups == int(n * 0.4) and int(s.pruned.sum()) == int(n * 0.2)
    pm.validate_structure(s)
    assert torch.all(s.merge_weight[s.centers] == 1)
    assert torch.all(s.merge_weight[s.pruned] == 0) and torch.all(s.restore_weight[s.pruned] == 0)
    # member weight = s_j / (s_center + eps)
    j = int(torch.nonzero((~s.pruned) & (s.merge_weight < 1))[0])
    c = int(s.centers[s.assign[j]])
    assert s.merge_weight[j] == pytest.approx(float(scores[j] / (scores[c] + 1e-8)), rel=1e-6)


def test_closed_form_restore_equals_pinv():
    s, _ = _random_structure(grid=(6, 5), keep=0.3, prune=0.3, seed=3)
    for p in (0, 1):
        m = pmd.to_dense_merge(s, p)
        r = pmd.to_dense_restore(s, p)
        assert torch.allclose(r, torch.linalg.pinv(m), atol=1e-5)


def test_sparse_equals_dense_and_shortcut():
    s, _ = _random_structure(grid=(4, 6), keep=0.5, prune=0.25, seed=1)
    x = torch.randn(2, 1 + 24, 8)
    z = pm.merge_tokens(x, s.assign.clamp(min=0), s.merge_weight, s.num_groups, 1)
    zd = pmd.merge_tokens_dense(x, pmd.to_dense_merge(s, 1))
    assert z.shape == (2, 1 + s.num_groups, 8)
    assert torch.allclose(z, zd, atol=1e-6)
    assert torch.equal(z[:, 0], x[:, 0])  # CLS unchanged
    block_out = z * 3.0
    y = pm.restore_patches(block_out, x, s.assign, s.restore_weight, 1)
    yd = pmd.restore_tokens_dense(block_out, x, pmd.to_dense_restore(s, 1),
                                  pmd.to_token_mask(s, 1))
    assert torch.allclose(y, yd, atol=1e-6)
    # pruned tokens come back unchanged through the shortcut; CLS comes from the block
    assert torch.equal(y[:, 1:][:, s.pruned], x[:, 1:][:, s.pruned])
    assert torch.equal(y[:, 0], block_out[:, 0])


def test_identity_structure_is_exact():
    s = pm.identity_structure((3, 4))
    assert s.is_identity()
    x = torch.randn(2, 13, 5)
    z = pm.merge_tokens(x, s.assign, s.merge_weight, s.num_groups, 1)
    assert torch.equal(z, x)
    assert torch.equal(pm.restore_patches(z, x, s.assign, s.restore_weight, 1), x)
    assert torch.equal(pmd.to_dense_merge(s, 1), torch.eye(13))


def test_select_tokens_ties_are_deterministic():
    center, prune = pm.select_tokens(torch.ones(6), 2, 2)
    assert center.tolist() == [True, True, False, False, False, False]
    assert prune.tolist() == [False, False, False, False, True, True]


def test_validate_structure_rejects_corruption():
    s, _ = _random_structure()
    bad = PMStructure(s.grid_size, s.assign.clone(), s.centers, s.merge_weight, s.restore_weight)
    bad.assign[0] = s.num_groups + 3
    with pytest.raises(PMStructureError, match='out of range'):
        pm.validate_structure(bad)
    bad = PMStructure((5, 5), s.assign, s.centers, s.merge_weight, s.restore_weight)
    with pytest.raises(PMStructureError, match='shape'):
        pm.validate_structure(bad)
    bad = PMStructure(s.grid_size, s.assign, s.centers.flip(0), s.merge_weight, s.restore_weight)
    with pytest.raises(PMStructureError, match='increasing'):
        pm.validate_structure(bad)


def test_sparse_gradients_match_dense():
    """Through merge and restore, the sparse path (with and without autograd) and its
    gradients (tokens, merge and restore weights) equal the dense ``M x`` / ``R z``."""
    s = pm.structure_from_scores(torch.rand(64), (8, 8), 0.4, 0.3)
    kept = (s.assign >= 0).float()
    m, r, t = pmd.to_dense_merge(s, 1), pmd.to_dense_restore(s, 1), pmd.to_token_mask(s, 1)
    x = torch.randn(3, 65, 16)
    xs = x.clone().requires_grad_()
    mw = (s.merge_weight * kept).requires_grad_()
    rw = (s.restore_weight * kept).requires_grad_()
    y = pm.restore_patches(pm.merge_tokens(xs, s.assign, mw, s.num_groups, 1), xs, s.assign,
                           rw, 1)
    xd, md, rd = x.clone().requires_grad_(), m.clone().requires_grad_(), \
        r.clone().requires_grad_()
    yd = pmd.restore_tokens_dense(pmd.merge_tokens_dense(xd, md), xd, rd, t)
    torch.testing.assert_close(y, yd, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the inference path gives the same numbers
        y0 = pm.restore_patches(pm.merge_tokens(x, s.assign, mw, s.num_groups, 1), x,
                                s.assign, rw, 1)
    torch.testing.assert_close(y0, y.detach(), atol=0, rtol=0)
    y.square().sum().backward()
    yd.square().sum().backward()
    torch.testing.assert_close(xs.grad, xd.grad, atol=1e-4, rtol=1e-5)
    idx = torch.nonzero(s.assign >= 0).flatten()
    torch.testing.assert_close(mw.grad[idx], md.grad[1 + s.assign[idx], 1 + idx],
                               atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(rw.grad[idx], rd.grad[1 + idx, 1 + s.assign[idx]],
                               atol=1e-4, rtol=1e-5)
