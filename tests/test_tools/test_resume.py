"""``--resume``: a run killed with SIGKILL resumes to the same weights; resumed Prune-and-Merge
runs keep their structure and do not score again."""
import os
import os.path as osp
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.utils import BASELINE, DEMO, REPO, load_state_dict, run_tool

pytestmark = pytest.mark.e2e
# CPU: bit-exact continuation is a CPU property (no nondeterministic GPU kernels)
ENV = dict(os.environ, PYTHONUNBUFFERED='1', CUDA_VISIBLE_DEVICES='')


def copy_run(run, tmp_path):
    """A copy of a session run's work dir (resuming writes into it)."""
    work = str(tmp_path / 'work')
    shutil.copytree(run['work_dir'], work)
    with open(osp.join(work, 'last_checkpoint'), 'w') as f:  # it names the original path
        f.write(osp.join(work, 'iter_2.pth'))
    return work


def test_pm_resume_keeps_the_structure(pm_run, sample_root, tmp_path):
    work = copy_run(pm_run, tmp_path)
    saved = {k: v for k, v in load_state_dict(osp.join(work, 'iter_2.pth')).items()
             if k.startswith('backbone.pm.')}
    out = run_tool('tools/train.py', DEMO, '--work-dir', work, '--resume', '--data-root',
                   sample_root, '--cfg-options', 'train_cfg.max_iters=3',
                   'train_cfg.val_begin=100')
    log = out.stdout + out.stderr
    assert 'resumed epoch: 0, iter: 2' in log
    assert 'not scoring again' in log and 'PM scoring' not in log and 'loss_kd' in log
    resumed = load_state_dict(osp.join(work, 'iter_3.pth'))
    for key in saved:
        if key.endswith(('assign', 'centers', 'grid_size', 'span')):
            assert torch.equal(saved[key], resumed[key]), key


def test_baseline_resume(baseline_run, sample_root, tmp_path):
    work = copy_run(baseline_run, tmp_path)
    out = run_tool('tools/train.py', BASELINE, '--work-dir', work, '--resume', '--data-root',
                   sample_root, '--cfg-options', 'train_cfg.max_iters=3',
                   'train_cfg.val_begin=100')
    assert 'resumed epoch: 0, iter: 2' in out.stdout + out.stderr
    assert osp.isfile(osp.join(work, 'iter_3.pth'))


# --------------------------------------------------------------------------------------------
# kill -9 + --resume == uninterrupted
# --------------------------------------------------------------------------------------------
def train_cmd(root, work, *extra):
    opts = ['train_cfg.max_iters=6', 'train_cfg.val_interval=100', 'train_cfg.val_begin=100',
            'default_hooks.checkpoint.interval=3', 'default_hooks.logger.interval=1',
            'randomness.seed=0', 'randomness.deterministic=False',
            'model.backbone.drop_path_rate=0.0', 'model.decode_head.drop_path_rate=0.0',
            'param_scheduler.0.end=6', 'train_dataloader.batch_size=1']
    return [sys.executable, 'tools/train.py', DEMO, '--work-dir', work, '--data-root', root,
            *extra, '--cfg-options', *opts]


def run(cmd, log_path):
    with open(log_path, 'w') as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=ENV,
                              timeout=600)
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


def test_kill_and_resume_matches_uninterrupted(sample_root, tmp_path):
    full, killed = str(tmp_path / 'full'), str(tmp_path / 'killed')
    run(train_cmd(sample_root, full), tmp_path / 'full.log')

    # the same run, killed with SIGKILL once iter_3.pth is complete (CheckpointHook names it in
    # last_checkpoint only after torch.save returned)
    with open(tmp_path / 'killed.log', 'w') as log:
        proc = subprocess.Popen(train_cmd(sample_root, killed), cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, env=ENV)
        try:
            deadline = time.time() + 400
            while not last_checkpoint(killed).endswith('iter_3.pth'):
                assert proc.poll() is None, open(tmp_path / 'killed.log').read()[-5000:]
                assert time.time() < deadline, 'iter_3.pth did not appear'
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not osp.exists(osp.join(killed, 'iter_6.pth'))
    resumed_from = last_checkpoint(killed)
    assert resumed_from.endswith('iter_3.pth')

    log = run(train_cmd(sample_root, killed, '--resume'), tmp_path / 'resumed.log')
    assert f'Auto resumed from the latest checkpoint {resumed_from}' in log
    assert 'resumed epoch: 0, iter: 3' in log
    assert 'Advance dataloader 3 steps' in log
    assert 'not scoring again' in log and 'PM scoring' not in log
    assert 'distillation is off' not in log  # the teacher came back from the checkpoint

    a, b = load(osp.join(full, 'iter_6.pth')), load(osp.join(killed, 'iter_6.pth'))
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
