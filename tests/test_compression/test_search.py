"""Global structure search (official ``tm_prune_merge_to_center.tm_prune``) on synthetic scores."""
import pytest
import torch

from mmseg_pm.compression import normalize_scores, search_structures
from mmseg_pm.compression.search import structure_table


def _counts(rows):
    return [(r['K'], r['merged'], r['pruned']) for r in rows]


def test_global_search_exact_counts():
    g = torch.Generator().manual_seed(0)
    scores = {i: torch.rand(16, generator=g) for i in range(4)}
    spans = [(i, i) for i in range(4)]
    structures, rows = search_structures(scores, spans, (4, 4), keep_rate=0.5, prune_rate=0.25)
    assert sum(r['K'] for r in rows) == int(16 * 0.5) * 4
    assert sum(r['pruned'] for r in rows) == int(16 * 0.25) * 4
    assert all(r['K'] + r['merged'] + r['pruned'] == 16 for r in rows)
    assert sorted(structures) == [0, 1, 2, 3]
    assert '| all | 64 | 32 |' in structure_table(rows)


def test_uniform_allocation_gives_equal_k():
    scores = {i: torch.rand(16) for i in range(3)}
    _, rows = search_structures(scores, [(i, i) for i in range(3)], (4, 4), keep_rate=0.5,
                                prune_rate=0.25, allocation='uniform')
    assert _counts(rows) == [(8, 4, 4)] * 3


def test_depth_discount_shifts_centers_to_shallow_layers():
    # normalised: layer 0 = 0.5 everywhere; layer 1 = [0.719, 0.695, 0, 0]
    scores = {0: torch.ones(4), 1: torch.tensor([3.0, 2.9, 0.0, 0.0])}
    spans = [(0, 0), (1, 1)]
    _, rows = search_structures(scores, spans, (2, 2), keep_rate=0.5, prune_rate=0.0,
                                depth_discount=0.0)
    assert [r['K'] for r in rows] == [2, 2]
    # a discount of 0.3 per block scales layer 1 by 0.7: 0.503 and 0.487 < 0.5 but the first
    _, rows = search_structures(scores, spans, (2, 2), keep_rate=0.5, prune_rate=0.0,
                                depth_discount=0.3)
    assert [r['K'] for r in rows] == [3, 1]
    norm = normalize_scores(scores, 0.3)
    assert torch.allclose(norm[1], torch.tensor([3.0, 2.9, 0, 0]).double() /
                          (torch.tensor([3.0, 2.9]).norm() + 1e-8) * 0.7)


def test_ties_resolved_deterministically_and_one_center_minimum():
    scores = {0: torch.ones(4), 1: torch.ones(4) * 1e-9}
    a, rows_a = search_structures(scores, [(0, 0), (1, 1)], (2, 2), keep_rate=0.25, prune_rate=0.0,
                                  depth_discount=0.0)
    b, rows_b = search_structures(scores, [(0, 0), (1, 1)], (2, 2), keep_rate=0.25, prune_rate=0.0,
                                  depth_discount=0.0)
    assert rows_a == rows_b and torch.equal(a[0].centers, b[0].centers)
    # equal normalised scores: layer 0 would win both centers; the one-center minimum moves
    # one to layer 1 and keeps the total
    assert [r['K'] for r in rows_a] == [1, 1]


def test_span_scores_are_averaged():
    scores = {0: torch.tensor([1.0, 0, 0, 0]), 1: torch.tensor([0, 0, 0, 1.0]),
              2: torch.tensor([0, 0, 0, 1.0])}
    structures, rows = search_structures(scores, [(0, 2)], (2, 2), keep_rate=0.25, prune_rate=0.0,
                                         depth_discount=0.0)
    assert rows[0]['K'] == 1 and structures[0].centers.tolist() == [3]


def test_zero_and_nan_scores_fall_back_with_warning():
    scores = {0: torch.zeros(4), 1: torch.tensor([float('nan'), 1.0, 1.0, 1.0])}
    with pytest.warns(UserWarning, match='flat scores'):
        _, rows = search_structures(scores, [(0, 0), (1, 1)], (2, 2), keep_rate=0.5,
                                    prune_rate=0.0)
    assert sum(r['K'] for r in rows) == 4
