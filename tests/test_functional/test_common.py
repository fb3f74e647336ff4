"""The helpers of mmseg_pm.functional.common that the peer methods share."""
import pytest
import torch

from mmseg_pm.errors import ConfigError, StructureError
from mmseg_pm.functional.common import (Reduction, check_tokens, identity_reduction,
                                        keep_count, merge_into_slots, ones_size,
                                        restore_tokens, slots_to_index)


def test_keep_count_is_ceil_of_the_decimal_product():
    assert keep_count(1024, 0.7) == 717
    assert keep_count(196, 0.7) == 138
    assert keep_count(10, 0.7) == 7
    assert keep_count(100, 0.07) == 7  # the binary product is 7.000000000000001
    assert keep_count(3, 0.1) == 1
    assert keep_count(5, 1) == 5
    assert keep_count(0, 0.5) == 0


@pytest.mark.parametrize('rate', [0, -0.5, 1.01, float('nan'), float('inf'), True, '0.5'])
def test_keep_count_rejects_bad_rates(rate):
    with pytest.raises(ConfigError):
        keep_count(10, rate)


def test_check_tokens():
    x = torch.zeros(2, 5, 3)
    assert check_tokens(x, 1) == 4
    assert check_tokens(x, 0, torch.ones(2, 5)) == 5
    with pytest.raises(StructureError):
        check_tokens(torch.zeros(5, 3), 1)
    with pytest.raises(StructureError):
        check_tokens(x, 1, torch.ones(2, 4))
    with pytest.raises(StructureError):
        check_tokens(torch.zeros(2, 0, 3), 1)
    with pytest.raises(ConfigError):
        check_tokens(x, -1)


def test_identity_reduction_marks_padding_rows():
    x = torch.randn(2, 4, 3)
    size = torch.tensor([[1., 1., 1., 1.], [1., 2., 0., 0.]])
    red = identity_reduction(x, size, 1)
    assert isinstance(red, Reduction) and red.x is x and red.size is size
    assert red.index.tolist() == [[0, 1, 2], [0, -1, -1]]
    assert ones_size(x).dtype == torch.float32
    assert ones_size(x.double()).dtype == torch.float64


def test_merge_into_slots_copies_averages_and_pads():
    x = torch.tensor([[[1., 10.], [2., 20.], [4., 40.], [8., 80.]]], requires_grad=True)
    slot = torch.tensor([[0, 1, 1, -1]])
    weight = torch.tensor([[1., 1., 3., 5.]])
    out, size = merge_into_slots(x, slot, 3, weight=weight, size=weight)
    assert torch.equal(out[0, 0], x[0, 0])  # single member: exact copy
    assert torch.allclose(out[0, 1], (x[0, 1] + 3 * x[0, 2]) / 4)
    assert torch.equal(out[0, 2], torch.zeros(2))  # no member: padding
    assert size.tolist() == [[1., 4., 0.]]
    out.sum().backward()
    assert torch.allclose(x.grad[0, :, 0], torch.tensor([1., .25, .75, 0.]))


def test_merge_into_slots_zero_weights_fall_back_to_the_mean():
    x = torch.tensor([[[1.], [3.], [5.]]])
    out, size = merge_into_slots(x, torch.tensor([[0, 0, 1]]), 2,
                                 weight=torch.tensor([[0., 0., 0.]]))
    assert out.flatten().tolist() == [2., 5.] and size is None


def test_merge_into_slots_no_nan_gradient_from_padding():
    x = torch.randn(1, 3, 2, requires_grad=True)
    weight = torch.tensor([[1., float('-inf'), 2.]])
    out, _ = merge_into_slots(x, torch.tensor([[0, -1, 0]]), 1, weight=weight)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[0, 1].abs().sum() == 0


def test_slots_to_index_and_restore():
    slot = torch.tensor([[0, 2, 1, 2, -1]])
    index = slots_to_index(slot, 1)
    assert index.tolist() == [[1, 0, 1, -1]]
    z = torch.tensor([[[0.], [5.], [7.]]])
    shortcut = torch.tensor([[[0.], [1.], [2.], [3.], [4.]]])
    assert restore_tokens(z, index, 1, shortcut=shortcut).flatten().tolist() == [0, 7, 5, 7, 4]
