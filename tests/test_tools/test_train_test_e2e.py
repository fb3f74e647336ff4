"""End-to-end runs of tools/train.py and tools/test.py on the real ADE20K sample (slow)."""
import json
import os.path as osp

import pytest
import torch

from conftest import run_tool

pytestmark = pytest.mark.e2e


def data_options(root, batch_size=1):
    opts = []
    for split in ('train', 'val', 'test'):
        opts += [f'{split}_dataloader.dataset.data_root={root}',
                 f'{split}_dataloader.num_workers=0',
                 f'{split}_dataloader.persistent_workers=False']
    return opts + [f'train_dataloader.batch_size={batch_size}']


def test_baseline_train_resume_test(sample_root, tmp_path):
    work = str(tmp_path / 'baseline')
    cfg = 'configs/segmenter_vit-s_ade20k.py'
    opts = ['model.pretrained=None', 'train_cfg.val_interval=2',
            'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1',
            *data_options(sample_root)]
    out = run_tool('tools/train.py', cfg, '--work-dir', work, '--cfg-options',
                   'train_cfg.max_iters=2', *opts)
    log = out.stdout + out.stderr
    assert 'mIoU' in log and osp.isfile(osp.join(work, 'iter_2.pth'))
    out = run_tool('tools/train.py', cfg, '--work-dir', work, '--resume', '--cfg-options',
                   'train_cfg.max_iters=3', 'default_hooks.checkpoint.interval=1', *opts)
    log = out.stdout + out.stderr
    assert 'resumed epoch: 0, iter: 2' in log and osp.isfile(osp.join(work, 'iter_3.pth'))
    out = run_tool('tools/test.py', cfg, osp.join(work, 'iter_3.pth'), '--work-dir',
                   str(tmp_path / 'test'), '--cfg-options', *data_options(sample_root))
    assert 'Test metrics (%): aAcc=' in out.stdout and 'mIoU=' in out.stdout


def pm_tensors(path):
    sd = torch.load(path, map_location='cpu', weights_only=False)['state_dict']
    return {k: v for k, v in sd.items() if k.startswith('backbone.pm.')}


def test_pm_compress_finetune_test_resume(sample_root, tmp_path):
    work = str(tmp_path / 'pm')
    cfg = 'configs/demo/pm_segmenter_vit-t_ade20k-sample-256.py'
    opts = data_options(sample_root, batch_size=2)
    out = run_tool('tools/train.py', cfg, '--work-dir', work, '--cfg-options', *opts)
    log = out.stdout + out.stderr
    assert 'Prune-and-Merge: scoring 12 blocks over 2 iterations' in log
    assert '| block(s) | N | K | merged | pruned | K / N |' in log and 'loss_kd' in log
    assert 'mIoU' in log
    record = json.load(open(osp.join(work, 'pm_structure.json')))
    assert len(record['rows']) == 12
    assert sum(r['K'] for r in record['rows']) == int(256 * 0.6) * 12
    saved = pm_tensors(osp.join(work, 'iter_2.pth'))
    assert len(saved) == 12 * 6  # span, grid_size, assign, centers, merge/restore weights
    out = run_tool('tools/test.py', cfg, osp.join(work, 'iter_2.pth'), '--work-dir',
                   str(tmp_path / 'test'), '--cfg-options', *opts)
    assert 'mIoU=' in out.stdout
    out = run_tool('tools/train.py', cfg, '--work-dir', work, '--resume', '--cfg-options',
                   'train_cfg.max_iters=3', *opts)
    log = out.stdout + out.stderr
    assert 'not scoring again' in log and 'PM scoring' not in log and 'loss_kd' in log
    resumed = pm_tensors(osp.join(work, 'iter_3.pth'))
    for key in saved:
        if key.endswith(('assign', 'centers', 'grid_size', 'span')):
            assert torch.equal(saved[key], resumed[key]), key


def test_pm_compress_tool_writes_strictly_loadable_checkpoint(sample_root, tmp_path):
    from mmengine.config import Config
    from mmseg.registry import MODELS
    cfg_path = 'configs/demo/pm_segmenter_vit-t_ade20k-sample-256.py'
    cfg = Config.fromfile(cfg_path)
    model = MODELS.build(cfg.model)
    model.init_weights()
    src = tmp_path / 'uncompressed.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, src)
    out = tmp_path / 'compressed.pth'
    proc = run_tool('tools/pm_compress.py', cfg_path, str(src), '--out', str(out),
                    '--score-iters', '1', '--keep-rate', '0.5', '--no-eval', '--cfg-options',
                    *data_options(sample_root, batch_size=2))
    assert '| block(s) | N | K |' in proc.stdout and 'with M/R counted' in proc.stdout
    record = json.load(open(tmp_path / 'compressed.json'))
    assert sum(r['K'] for r in record['rows']) == 128 * 12
    ckpt = torch.load(out, map_location='cpu', weights_only=False)
    assert ckpt['meta']['pm_structure']['units'][0]['num_groups'] == record['rows'][0]['K']
    fresh = MODELS.build(cfg.model)
    fresh.load_state_dict(ckpt['state_dict'], strict=True)
    assert fresh.backbone.is_compressed
    # compressing a compressed checkpoint is refused with one line
    proc = run_tool('tools/pm_compress.py', cfg_path, str(out), '--out',
                    str(tmp_path / 'again.pth'), '--cfg-options',
                    *data_options(sample_root), check=False)
    assert proc.returncode == 2 and 'already compressed' in proc.stderr
