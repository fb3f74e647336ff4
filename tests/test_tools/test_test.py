"""End-to-end runs of tools/test.py on checkpoints trained on the real ADE20K sample."""
import os
import os.path as osp

import pytest

from tests.utils import BASELINE, DEMO, run_tool

pytestmark = pytest.mark.e2e


def test_compressed_checkpoint(pm_run, sample_root, tmp_path):
    out = run_tool('tools/test.py', DEMO, osp.join(pm_run['work_dir'], 'iter_2.pth'),
                   '--work-dir', str(tmp_path / 'work'), '--data-root', sample_root,
                   '--cfg-options', 'test_dataloader.dataset.indices=4')
    assert 'Test metrics (%): aAcc=' in out.stdout and 'mIoU=' in out.stdout


def test_baseline_checkpoint_writes_predictions_and_drawings(baseline_run, sample_root,
                                                             tmp_path):
    preds, drawn = tmp_path / 'preds', tmp_path / 'drawn'
    out = run_tool('tools/test.py', BASELINE, osp.join(baseline_run['work_dir'], 'iter_2.pth'),
                   '--work-dir', str(tmp_path / 'work'), '--out', str(preds), '--show-dir',
                   str(drawn), '--data-root', sample_root, '--cfg-options',
                   'test_dataloader.dataset.indices=4')
    assert 'mIoU=' in out.stdout
    assert len(os.listdir(preds)) == 4  # one prediction PNG per image
    drawings = [f for _, _, files in os.walk(drawn) for f in files if f.endswith('.png')]
    assert len(drawings) == 4  # every image drawn (mmseg draws every 50th by default)
