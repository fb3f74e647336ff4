"""Fault tolerance: a run killed with SIGKILL resumes to the same weights; atomic writes."""
import os
import os.path as osp
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO
from mmseg_pm.utils.io import atomic_write, save_json

DEMO = 'configs/demo/pm_segmenter_vit-t_ade20k-sample-256.py'
# CPU: bit-exact continuation is a CPU property (no nondeterministic GPU kernels)
ENV = dict(os.environ, PYTHONUNBUFFERED='1', CUDA_VISIBLE_DEVICES='')


# --------------------------------------------------------------------------------------------
# atomic_write
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# kill -9 + --resume == uninterrupted
# --------------------------------------------------------------------------------------------
def train_cmd(root, work, *extra):
    opts = ['train_cfg.max_iters=8', 'train_cfg.val_interval=100', 'train_cfg.val_begin=100',
            'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1',
            'randomness.seed=0', 'randomness.deterministic=False',
            'model.backbone.drop_path_rate=0.0', 'model.decode_head.drop_path_rate=0.0',
            'param_scheduler.0.end=8', 'train_dataloader.batch_size=1']
    for split in ('train', 'val', 'test'):
        opts += [f'{split}_dataloader.dataset.data_root={root}',
                 f'{split}_dataloader.num_workers=0',
                 f'{split}_dataloader.persistent_workers=False']
    return [sys.executable, 'tools/train.py', DEMO, '--work-dir', work, *extra,
            '--cfg-options', *opts]


def run(cmd, log_path):
    with open(log_path, 'w') as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                              env=ENV, timeout=600)
    text = open(log_path).read()
    assert proc.returncode == 0, text[-5000:]
    return text


def last_checkpoint(work):
    try:
        with open(osp.join(work, 'last_checkpoint')) as f:
            return f.read().strip()
    except OSError:
        return ''


def load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a
               if a[k].is_floating_point())


@pytest.mark.e2e
def test_kill_and_resume_matches_uninterrupted(sample_root, tmp_path):
    full, killed = str(tmp_path / 'full'), str(tmp_path / 'killed')
    run(train_cmd(sample_root, full), tmp_path / 'full.log')

    # the same run, killed with SIGKILL once iter_4.pth is complete (CheckpointHook names it in
    # last_checkpoint only after torch.save returned)
    with open(tmp_path / 'killed.log', 'w') as log:
        proc = subprocess.Popen(train_cmd(sample_root, killed), cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT,
                                env=ENV)
        try:
            deadline = time.time() + 400
            while not last_checkpoint(killed).endswith('iter_4.pth'):
                assert proc.poll() is None, open(tmp_path / 'killed.log').read()[-5000:]
                assert time.time() < deadline, 'iter_4.pth did not appear'
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not osp.exists(osp.join(killed, 'iter_8.pth'))
    resumed_from = last_checkpoint(killed)
    assert resumed_from.endswith('iter_4.pth')

    log = run(train_cmd(sample_root, killed, '--resume'), tmp_path / 'resumed.log')
    assert f'Auto resumed from the latest checkpoint {resumed_from}' in log
    assert 'resumed epoch: 0, iter: 4' in log
    assert 'Advance dataloader 4 steps' in log
    assert 'not scoring again' in log and 'PM scoring' not in log
    assert 'distillation is off' not in log  # the teacher came back from the checkpoint

    a, b = load(osp.join(full, 'iter_8.pth')), load(osp.join(killed, 'iter_8.pth'))
    diff = max_abs_diff(a['state_dict'], b['state_dict'])
    print(f'max |w_resumed - w_uninterrupted| = {diff:.3e}')
    assert diff <= 1e-6
    assert max_abs_diff(a['pm_teacher'], b['pm_teacher']) == 0
    for k, v in a['state_dict'].items():
        if k.startswith('backbone.pm.') and not v.is_floating_point():
            assert torch.equal(v, b['state_dict'][k]), k  # same structure
    # the SGD momentum buffers continue too
    ma = [s['momentum_buffer'] for s in a['optimizer']['state'].values()]
    mb = [s['momentum_buffer'] for s in b['optimizer']['state'].values()]
    assert len(ma) == len(mb) > 0
    assert max(float((x - y).abs().max()) for x, y in zip(ma, mb)) <= 1e-6
