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
