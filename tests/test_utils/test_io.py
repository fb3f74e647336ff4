"""Atomic writes (mmseg_pm.utils.io): a crash never leaves a partial file."""
import json
import os

import pytest
import torch

from mmseg_pm.utils.io import atomic_write, save_checkpoint, save_json


def test_atomic_write_failure_leaves_nothing(tmp_path):
    target = tmp_path / 'out' / 'pm_structure.json'

    def failing_writer(tmp):
        with open(tmp, 'w') as f:
            f.write('{"partial": ')  # half-written, then the writer dies
        raise RuntimeError('disk full')

    with pytest.raises(RuntimeError, match='disk full'):
        atomic_write(str(target), failing_writer)
    assert not target.exists()
    assert os.listdir(tmp_path / 'out') == []  # no temporary file left behind either


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / 'record.json'
    save_json({'a': 1}, str(target))
    assert target.read_text() == '{\n "a": 1\n}\n'

    def failing_writer(tmp):
        with open(tmp, 'w') as f:
            f.write('garbage')
        raise KeyboardInterrupt  # also on BaseException (Ctrl-C)

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(target), failing_writer)
    assert target.read_text() == '{\n "a": 1\n}\n'  # the previous version is intact
    assert os.listdir(tmp_path) == ['record.json']


def test_saved_files_have_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = save_checkpoint({'state_dict': {'w': torch.ones(2)}}, str(tmp_path / 'c.pth'))
    finally:
        os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert torch.equal(torch.load(path)['state_dict']['w'], torch.ones(2))
    assert json.loads(open(save_json([1], str(tmp_path / 'x.json'))).read()) == [1]
