"""PruneMergeUnit / PruneMerge (mmseg_pm.models.reducers.prune_merge)."""
import torch

import mmseg_pm  # noqa: F401
from mmseg_pm.functional import prune_merge as pm
from mmseg_pm.models.reducers import PruneMergeUnit


def pruned_unit():
    unit = PruneMergeUnit((0, 0), (4, 4), num_prefix=1)
    scores = torch.rand(16, generator=torch.Generator().manual_seed(0))
    unit.install(pm.structure_from_scores(scores, (4, 4), 0.5, 0.25))
    assert unit._any_pruned
    return unit.eval()


def test_inference_follows_weights_changed_in_place():
    # outside autograd the masked weights are kept between forwards: an in-place change of the
    # parameters (an optimizer step, a checkpoint load) must reach the next forward
    unit = pruned_unit()
    x = torch.randn(2, 17, 8)
    with torch.no_grad():
        z, y = unit.merge(x), unit.restore(unit.merge(x), x)
        unit.merge_weight.mul_(2)
        unit.restore_weight.mul_(3)
        kept = ~(unit.assign < 0)
        torch.testing.assert_close(unit.merge(x)[:, 1:], 2 * z[:, 1:])
        y3 = unit.restore(z, x)
    torch.testing.assert_close(y3[:, 1:][:, kept], 3 * y[:, 1:][:, kept])
    torch.testing.assert_close(y3[:, 1:][:, ~kept], x[:, 1:][:, ~kept])


def test_pruned_weights_stay_masked_with_autograd():
    unit = pruned_unit().train()
    pruned = unit.assign < 0
    with torch.no_grad():
        unit.merge_weight[pruned] = 5.0  # an optimizer could move them; they must not count
    x = torch.randn(1, 17, 8, requires_grad=True)
    z = unit.merge(x)
    with torch.no_grad():
        unit.merge_weight[pruned] = 0.0
        expected = unit.merge(x)
    torch.testing.assert_close(z, expected)
    z.sum().backward()
    assert unit.merge_weight.grad[pruned].abs().sum() == 0
