"""Bad input stops the tools with one actionable line and exit code 2 (no deep traceback)."""
import os

from conftest import run_tool

DEMO = 'configs/demo/pm_segmenter_vit-t_ade20k-sample-256.py'


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert 'Traceback' not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith('error: ')
    for needle in needles:
        assert needle in line, line


def test_missing_config():
    proc = run_tool('tools/train.py', 'configs/nope.py', check=False)
    assert_one_line_error(proc, 'config file not found', 'configs/nope.py')


def test_missing_data_root(tmp_path):
    proc = run_tool('tools/train.py', DEMO, '--work-dir', str(tmp_path), '--cfg-options',
                    f'train_dataloader.dataset.data_root={tmp_path}/nowhere', check=False)
    assert_one_line_error(proc, 'train data root not found', 'nowhere',
                          'prepare_ade20k_sample.py')


def test_empty_image_folder(tmp_path):
    os.makedirs(tmp_path / 'root' / 'images' / 'training')
    proc = run_tool('tools/train.py', DEMO, '--work-dir', str(tmp_path), '--cfg-options',
                    f'train_dataloader.dataset.data_root={tmp_path}/root', check=False)
    assert_one_line_error(proc, 'image folder is empty')


def test_missing_pretrained_weights(tmp_path, sample_root):
    proc = run_tool('tools/train.py', 'configs/segmenter_vit-s_ade20k.py', '--work-dir',
                    str(tmp_path), '--cfg-options',
                    f'train_dataloader.dataset.data_root={sample_root}', check=False)
    assert_one_line_error(proc, 'vit_small_p16_384_20220308-410f6037.pth', 'model.pretrained=None')


def test_missing_baseline_checkpoint_for_compression(tmp_path, sample_root):
    proc = run_tool('tools/train.py', 'configs/pm_segmenter_vit-s_ade20k.py', '--work-dir',
                    str(tmp_path), check=False)
    assert_one_line_error(proc, 'load_from checkpoint not found', 'segmenter_vit-s_mask')


def test_keep_rate_out_of_range(tmp_path, sample_root):
    proc = run_tool('tools/train.py', DEMO, '--work-dir', str(tmp_path), '--cfg-options',
                    f'train_dataloader.dataset.data_root={sample_root}',
                    f'val_dataloader.dataset.data_root={sample_root}',
                    'model.backbone.pm_cfg.keep_rate=1.5', check=False)
    assert_one_line_error(proc, 'keep_rate must be in (0, 1], got 1.5')


def test_test_tool_missing_checkpoint(tmp_path):
    proc = run_tool('tools/test.py', DEMO, str(tmp_path / 'none.pth'), check=False)
    assert_one_line_error(proc, 'checkpoint not found', 'none.pth')
