"""The knob of every method and the GFLOPs budget search (synthetic cost functions)."""
import math

import pytest

from mmseg_pm.analysis.knobs import (METHODS, Knob, method_knob, search_knob, stage_blocks)
from mmseg_pm.errors import ConfigError


def keep_rate_knob(**kw):
    return Knob('evit', 'keep_rate', 0.01, 1.0, **kw)


def test_stage_blocks():
    assert stage_blocks(12) == [3, 6, 9]
    assert stage_blocks(24) == [6, 12, 18]
    assert stage_blocks(4) == [1, 2, 3]
    assert stage_blocks(2) == [0, 1]


def test_method_knobs_make_valid_reducer_configs():
    for method in METHODS:
        knob = method_knob(method, 12, 1024)
        assert knob.method == method and knob.lo < knob.hi and knob.description
    tome = method_knob('tome', 12, 1024)
    cfg = tome.make(52)
    # the explicit per-block list of ToMe's decreasing schedule (52, -1): 104 ... 0
    assert cfg['r'][0] == 104 and cfg['r'][-1] == 0 and len(cfg['r']) == 12
    assert not tome.increasing and tome.integer
    assert method_knob('evit', 12, 1024).make(0.6)['drop_blocks'] == [3, 6, 9]
    assert method_knob('mstm', 12, 1024).make(0.6)['reduce_blocks'] == [3, 6, 9]
    assert method_knob('algm', 12, 1024).make(0.9)['global_block'] == 4
    assert method_knob('pm', 12, 1024, prune_rate=0.1).hi == pytest.approx(0.9)
    with pytest.raises(ConfigError, match='unknown method'):
        method_knob('dynamicvit', 12, 1024)
    with pytest.raises(ConfigError, match='prune rate'):
        method_knob('pm', 12, 1024, prune_rate=1.0)


def test_continuous_search_reaches_the_target_and_records_its_path():
    def cost(k):  # convex, increasing: a ViT's FLOPs in its keep rate
        return 10.0 * (0.3 + 0.5 * k + 0.2 * k * k)

    res = search_knob(cost, keep_rate_knob(), 6.0)
    assert res.reached and abs(res.error) <= 0.01
    assert res.gflops == pytest.approx(cost(res.value))
    assert res.evaluations[0][0] == 1.0 and res.evaluations[1][0] == 0.01  # both ends first
    assert len(res.evaluations) <= 14
    # the value is on the knob's grid, so the recorded value reproduces the GFLOPs
    assert res.value == round(res.value, 4)


def test_integer_decreasing_knob():
    knob = Knob('tome', 'r', 0, 64, integer=True, increasing=False)

    def cost(r):
        assert isinstance(r, int)
        return 100.0 - 0.9 * r

    res = search_knob(cost, knob, 70.0)
    assert res.reached and isinstance(res.value, int)
    assert abs(cost(res.value) - 70.0) <= 0.45 + 1e-9  # the best integer


def test_unreachable_targets_say_why():
    knob = keep_rate_knob()

    def cost(k):
        return 5.0 + 5.0 * k  # between 5.05 and 10

    low = search_knob(cost, knob, 2.0)
    assert not low.reached and 'strongest reduction' in low.reason and 'above' in low.reason
    high = search_knob(lambda k: 0.5 * cost(k), knob, 9.0)  # at most 5: below any 9 target
    assert not high.reached and 'weakest reduction' in high.reason
    assert [e[0] for e in high.evaluations] == [1.0]  # nothing else to try


def test_coarse_steps_are_reported():
    knob = keep_rate_knob()

    def cost(k):  # two plateaus: 6 or 10, a target of 8 cannot be met within 3%
        return 6.0 if k < 0.5 else 10.0

    res = search_knob(cost, knob, 8.0)
    assert not res.reached and 'too coarse' in res.reason
    assert res.gflops in (6.0, 10.0)


def test_search_does_not_depend_on_earlier_searches():
    calls = []

    def cost(k):
        calls.append(k)
        return 3.0 + 7.0 * math.sqrt(k)

    knob = keep_rate_knob()
    first = search_knob(cost, knob, 7.0)
    again = search_knob(cost, knob, 7.0)
    assert first.evaluations == again.evaluations and first.value == again.value
    other = search_knob(cost, knob, 5.0)
    alone = search_knob(cost, knob, 5.0)
    assert other.value == alone.value


def test_within_tolerance_at_the_end_of_the_range():
    knob = keep_rate_knob()
    res = search_knob(lambda k: 10.0 * k, knob, 10.2)  # 2% above the weakest setting
    assert res.reached and res.value == 1.0
