"""A run stopped by bad input while running leaves nothing behind (mmseg_pm.engine.cleanup)."""
import os

import pytest

from mmseg_pm.engine.cleanup import discard_refused_run
from mmseg_pm.errors import DataError


def fake_run(work_dir, *files):
    """What MMEngine's Runner writes first: a timestamped log folder and a config dump."""
    os.makedirs(os.path.join(work_dir, '20260101_000000', 'vis_data'))
    open(os.path.join(work_dir, '20260101_000000', '20260101_000000.log'), 'w').close()
    open(os.path.join(work_dir, 'config.py'), 'w').close()
    for name in files:
        open(os.path.join(work_dir, name), 'w').close()


def test_created_work_dir_is_removed(tmp_path):
    work = tmp_path / 'a' / 'b' / 'work'
    with pytest.raises(DataError):
        with discard_refused_run(str(work)):
            fake_run(str(work))
            raise DataError('annotation x.png has labels [200]')
    assert os.listdir(tmp_path) == []  # the parents it created too


def test_existing_work_dir_keeps_what_was_there(tmp_path):
    (tmp_path / 'iter_2.pth').write_text('earlier run')
    (tmp_path / 'config.py').write_text('earlier dump')
    with pytest.raises(DataError):
        with discard_refused_run(str(tmp_path)):
            fake_run(str(tmp_path))
            raise DataError('bad')
    assert sorted(os.listdir(tmp_path)) == ['config.py', 'iter_2.pth']


@pytest.mark.parametrize('result', ['iter_1.pth', 'pm_structure.json'])
def test_runs_that_produced_results_are_kept(tmp_path, result):
    with pytest.raises(DataError):
        with discard_refused_run(str(tmp_path / 'work')):
            fake_run(str(tmp_path / 'work'), result)
            raise DataError('bad')
    assert sorted(os.listdir(tmp_path / 'work')) == sorted(['20260101_000000', 'config.py',
                                                            result])


def test_other_errors_are_not_cleaned(tmp_path):
    """A bug keeps its logs (they help to find it)."""
    with pytest.raises(KeyError):
        with discard_refused_run(str(tmp_path / 'work')):
            fake_run(str(tmp_path / 'work'))
            raise KeyError('bug')
    assert sorted(os.listdir(tmp_path / 'work')) == ['20260101_000000', 'config.py']
