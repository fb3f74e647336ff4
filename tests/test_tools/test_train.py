"""End-to-end runs of tools/train.py on the real ADE20K sample (the ``pm_run`` and
``baseline_run`` fixtures train once per session; ``--resume`` is in test_resume.py)."""
import json
import os.path as osp

import pytest

from tests.utils import load_state_dict

pytestmark = pytest.mark.e2e


def pm_tensors(path):
    return {k: v for k, v in load_state_dict(path).items() if k.startswith('backbone.pm.')}


def test_pm_train_compresses_then_finetunes(pm_run):
    log, work = pm_run['log'], pm_run['work_dir']
    assert 'Prune-and-Merge: scoring 12 blocks over 2 iterations' in log
    assert '| block(s) | N | K | merged | pruned | K / N |' in log
    assert 'loss_kd' in log and 'mIoU' in log
    record = json.load(open(osp.join(work, 'pm_structure.json')))
    assert len(record['rows']) == 12
    assert sum(r['K'] for r in record['rows']) == int(256 * 0.6) * 12
    assert sum(r['pruned'] for r in record['rows']) == int(256 * 0.1) * 12
    assert record['settings']['keep_rate'] == 0.6 and record['settings']['score_iters'] == 2
    saved = pm_tensors(osp.join(work, 'iter_2.pth'))
    assert len(saved) == 12 * 6  # span, grid_size, assign, centers, merge / restore weights
    assert all(osp.isfile(osp.join(work, f)) for f in ('iter_1.pth', 'last_checkpoint'))


def test_baseline_train_validates(baseline_run):
    log, work = baseline_run['log'], baseline_run['work_dir']
    assert 'mIoU' in log and 'Prune-and-Merge' not in log
    state = load_state_dict(osp.join(work, 'iter_2.pth'))
    assert not any('.pm.' in k for k in state)
    assert state['backbone.pos_embed'].shape == (1, 1 + 16 * 16, 192)
