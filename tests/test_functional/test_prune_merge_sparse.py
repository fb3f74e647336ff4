"""Sparse application of Prune-and-Merge structures (mmseg_pm.functional.prune_merge_sparse)."""
import pytest
import torch

from mmseg_pm.functional import prune_merge as pm
from mmseg_pm.functional import prune_merge_dense as pmd
from mmseg_pm.functional import prune_merge_sparse as pms


def _random_structure(grid=(4, 6), keep=0.4, prune=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(grid[0] * grid[1], generator=g)
    return pm.structure_from_scores(scores, grid, keep, prune), scores


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


def test_sparse_ops_pass_gradcheck_and_ignore_pruned_entries():
    """``embedding_bag`` merge / restore: exact gradients (float64 gradcheck) in the tokens and
    both weights; the weights of pruned patches are never read, so their values change
    nothing and they get no gradient."""
    s = pm.structure_from_scores(torch.rand(16), (4, 4), 0.5, 0.25)
    pruned = s.assign < 0
    x = torch.randn(2, 17, 3, dtype=torch.float64, requires_grad=True)
    mw = s.merge_weight.double().masked_fill(pruned, 7.0).requires_grad_()
    rw = s.restore_weight.double().masked_fill(pruned, -3.0).requires_grad_()

    def run(x, mw, rw):
        return pm.restore_patches(pm.merge_tokens(x, s.assign, mw, s.num_groups, 1), x,
                                  s.assign, rw, 1)
    assert torch.autograd.gradcheck(run, (x, mw, rw))
    y = run(x, mw, rw)
    y.sum().backward()
    assert mw.grad[pruned].abs().sum() == 0 and rw.grad[pruned].abs().sum() == 0
    with torch.no_grad():
        clean = run(x, mw.masked_fill(pruned, 0), rw.masked_fill(pruned, 0))
    torch.testing.assert_close(y, clean, atol=0, rtol=0)
    torch.testing.assert_close(y[:, 1:][:, pruned], x[:, 1:][:, pruned])


@pytest.mark.parametrize('num_prefix,batch', [(0, 1), (1, 1), (1, 3)])
def test_carried_rows_restore_like_the_shortcut(num_prefix, batch):
    s, _ = _random_structure(grid=(5, 6), keep=0.5, prune=0.3, seed=2)
    x = torch.randn(batch, num_prefix + 30, 8)
    z = pms.merge_tokens(x, s.assign, s.merge_weight, s.num_groups, num_prefix) * 2 + 1
    carried = pms.carry_pruned(x, s.assign, num_prefix)
    assert carried.shape == (batch, int(s.pruned.sum()), 8)
    torch.testing.assert_close(carried, x[:, num_prefix:][:, s.pruned])
    y = pms.restore_patches(z, x, s.assign, s.restore_weight, num_prefix)
    yc = pms.restore_patches(z, None, s.assign, s.restore_weight, num_prefix, carried=carried)
    assert torch.equal(y, yc)
    with pytest.raises(ValueError, match='exactly one'):
        pms.restore_patches(z, x, s.assign, s.restore_weight, num_prefix, carried=carried)


@pytest.mark.parametrize('num_prefix,batch', [(0, 1), (1, 1), (1, 3)])
def test_restore_then_merge_equals_restore_then_merge(num_prefix, batch):
    """One step from unit a's output to unit b's input equals restoring the grid, merging it
    and carrying b's pruned rows (float64, so only rounding differs); the cached indices and
    weights give the same result again, and follow an in-place weight change."""
    a, _ = _random_structure(grid=(5, 6), keep=0.5, prune=0.3, seed=3)
    b, _ = _random_structure(grid=(5, 6), keep=0.4, prune=0.3, seed=4)
    p = num_prefix
    x = torch.randn(batch, p + 30, 8, dtype=torch.float64)
    ra, mb = a.restore_weight.double() + 0.5, b.merge_weight.double() + 0.25
    z = pms.merge_tokens(x, a.assign, a.merge_weight.double(), a.num_groups, p)
    z = z + torch.randn_like(z)  # the block
    carried = pms.carry_pruned(x, a.assign, p)
    cache = {}
    for step in range(3):
        if step == 2:
            mb.mul_(3)  # an optimizer step between forwards
        y = pms.restore_patches(z, None, a.assign, ra, p, carried=carried)
        expected = (pms.merge_tokens(y, b.assign, mb, b.num_groups, p),
                    pms.carry_pruned(y, b.assign, p))
        # z and carried given apart (copied together) or already as one tensor
        joined = torch.cat([z.reshape(-1, 8), carried.reshape(-1, 8)])
        for given in (None, joined):
            *got, whole = pms.restore_then_merge(z, carried, (a.assign, ra),
                                                 (b.assign, mb, b.num_groups), p, cache, given)
            for e, g in zip(expected, got):
                assert e.shape == g.shape
                torch.testing.assert_close(g, e, atol=1e-12, rtol=1e-12)
            # the two outputs are consecutive views of the returned tensor
            torch.testing.assert_close(whole, torch.cat([g.reshape(-1, 8) for g in got]))
            assert got[0].data_ptr() == whole.data_ptr()
