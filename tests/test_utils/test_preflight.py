"""Pre-flight checks of files, data and settings (mmseg_pm.utils.preflight)."""
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
from mmengine.config import Config

from mmseg_pm.errors import CheckpointReadError, DataError, FixedTokenCountError, UserError
from mmseg_pm.utils.preflight import (check_annotations, check_checkpoint, check_dataset,
                                      check_inference_size, max_pipeline_size, read_config,
                                      set_data_root)
from tests.utils import DEMO, REPO, copy_sample, edit_annotation, truncated_copy, with_label


# --------------------------------------------------------------------------------------------
# configs
# --------------------------------------------------------------------------------------------
def test_read_config_applies_data_root_to_every_dataloader(tmp_path):
    cfg = read_config(osp.join(REPO, DEMO), {'data_root': str(tmp_path)})
    for split in ('train', 'val', 'test'):
        assert cfg[f'{split}_dataloader'].dataset.data_root == str(tmp_path)
    assert cfg.data_root == str(tmp_path)
    # inside a dataset wrapper (RepeatDataset, ...) too
    cfg = Config(dict(train_dataloader=dict(dataset=dict(type='RepeatDataset', times=2,
                                                         dataset=dict(data_root='a')))))
    set_data_root(cfg, 'b')
    assert cfg.train_dataloader.dataset.dataset.data_root == 'b'


def test_read_config_names_broken_files(tmp_path):
    with pytest.raises(UserError, match='config file not found: .*nope.py'):
        read_config(str(tmp_path / 'nope.py'))
    (tmp_path / 'empty.py').write_text('')
    with pytest.raises(UserError, match='empty.py defines no model'):
        read_config(str(tmp_path / 'empty.py'))
    (tmp_path / 'broken.py').write_text('model = dict(\n  type="x",,\n)\n')
    with pytest.raises(UserError) as e:
        read_config(str(tmp_path / 'broken.py'))
    assert f'cannot read config {tmp_path / "broken.py"}, line 2: SyntaxError' in str(e.value)
    assert '\n' not in str(e.value)


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
def test_check_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # checkpoints/ of the checkout may hold the real weights
    with pytest.raises(UserError, match='is a URL .* does not download'):
        check_checkpoint('https://x.org/a.pth', 'checkpoint')
    name = 'vit_small_p16_384_20220308-410f6037.pth'
    with pytest.raises(UserError, match=f'pretrained weights not found: .*{name}.*download '
                                        r'https://download.openmmlab.com'):
        check_checkpoint(f'checkpoints/{name}', 'pretrained weights')
    good = tmp_path / 'good.pth'
    torch.save({'state_dict': {'w': torch.zeros(1000)}}, good)
    check_checkpoint(str(good), 'checkpoint')
    legacy = tmp_path / 'legacy.pth'
    torch.save({'w': torch.zeros(4)}, legacy, _use_new_zipfile_serialization=False)
    check_checkpoint(str(legacy), 'checkpoint')  # cannot be checked cheaply: accepted
    (tmp_path / 'empty.pth').write_bytes(b'')
    (tmp_path / 'text.pth').write_text('<html>404</html>')
    for path, reason in [(truncated_copy(good, tmp_path / 'half.pth'), 'truncated'),
                         (tmp_path / 'empty.pth', 'the file is empty'),
                         (tmp_path / 'text.pth', 'not a PyTorch checkpoint')]:
        with pytest.raises(CheckpointReadError, match=reason):
            check_checkpoint(str(path), 'load_from checkpoint')


# --------------------------------------------------------------------------------------------
# datasets and annotations
# --------------------------------------------------------------------------------------------
def dataset_cfg(root):
    ds = Config.fromfile(osp.join(REPO, DEMO)).train_dataloader.dataset
    ds.data_root = str(root)
    return ds


def test_check_dataset_folders(tmp_path):
    with pytest.raises(DataError, match='train data root not found: .*nowhere'):
        check_dataset(dataset_cfg(tmp_path / 'nowhere'), 'train')
    os.makedirs(tmp_path / 'root' / 'annotations' / 'training')
    with pytest.raises(DataError, match='train image folder not found: .*images/training'):
        check_dataset(dataset_cfg(tmp_path / 'root'), 'train')
    os.makedirs(tmp_path / 'root' / 'images' / 'training')
    (tmp_path / 'root' / 'images' / 'training' / 'notes.txt').write_text('x')
    with pytest.raises(DataError, match='image folder is empty.*prepare_ade20k_sample.py'):
        check_dataset(dataset_cfg(tmp_path / 'root'), 'train')


@pytest.mark.parametrize('case', ['labels', 'size', 'rgb', 'missing', 'uint16'])
def test_check_annotations(sample_root, tmp_path, case):
    root = tmp_path / 'data'
    stems = copy_sample(sample_root, root, num_train=4)
    check_dataset(dataset_cfg(root), 'train')  # the real sample passes
    stem = stems[1]
    if case == 'labels':
        path = edit_annotation(root, stem, with_label(200))
        needles = ['has labels [200] above 150', path]
    elif case == 'size':
        path = edit_annotation(root, stem, lambda a: a[:-3])
        needles = ['but its image is', path]
    elif case == 'rgb':
        path = edit_annotation(root, stem, lambda a: np.stack([a] * 3, -1))
        needles = ['expected a 2-D uint8 label map', path]
    elif case == 'uint16':
        path = edit_annotation(root, stem, lambda a: a.astype(np.uint16) * 300)
        needles = ['expected a 2-D uint8 label map', path]
    else:
        path = str(root / 'annotations' / 'training' / (stem + '.png'))
        os.remove(path)
        needles = ['annotation not found for image', path]
    with pytest.raises(DataError) as e:
        check_dataset(dataset_cfg(root), 'train')
    for needle in needles:
        assert needle in str(e.value), str(e.value)
    if case == 'labels':
        # only the first 3 (sorted) are opened: a bad 4th annotation is left to
        # CheckLabelRange in the pipeline (tests/test_datasets)
        shutil.copy(osp.join(sample_root, 'annotations', 'training', stem + '.png'), path)
        edit_annotation(root, stems[3], with_label(200))
        check_annotations(dataset_cfg(root), 'train')


# --------------------------------------------------------------------------------------------
# inference sizes of a fixed-token-count model
# --------------------------------------------------------------------------------------------
def test_max_pipeline_size():
    resize = dict(type='Resize', scale=(1024, 256), keep_ratio=True)
    assert max_pipeline_size([dict(type='LoadImageFromFile'), resize]) == (1024, 1024)
    assert max_pipeline_size([dict(resize, keep_ratio=False)]) == (256, 1024)
    assert max_pipeline_size([dict(type='LoadImageFromFile')]) is None
    assert max_pipeline_size([resize, dict(type='RandomResize', scale=(512, 512))]) is None
    assert max_pipeline_size([dict(type='TestTimeAug', transforms=[])]) is None


def test_check_inference_size():
    pipeline = Config.fromfile(osp.join(REPO, DEMO)).test_dataloader.dataset.pipeline
    grid, what = (16, 16), 'the structure is built for'
    check_inference_size(grid, 16, dict(mode='slide', crop_size=(256, 256), stride=(192, 192)),
                         pipeline, what)  # the shipped setting
    check_inference_size(grid, 16, dict(mode='slide', crop_size=(128, 256)), pipeline, what)
    with pytest.raises(FixedTokenCountError, match=r'crop_size=\(320, 320\) is larger than '
                                                   r'the 256x256 crop'):
        check_inference_size(grid, 16, dict(mode='slide', crop_size=(320, 320)), pipeline,
                             what)
    with pytest.raises(FixedTokenCountError, match='up to 1024x1024 after the test pipeline'):
        check_inference_size(grid, 16, dict(mode='whole'), pipeline, what)
    with pytest.raises(FixedTokenCountError, match='of any size'):
        check_inference_size(grid, 16, None, [dict(type='LoadImageFromFile')], what)
    fixed = [dict(type='LoadImageFromFile'),
             dict(type='Resize', scale=(256, 240), keep_ratio=False)]
    check_inference_size(grid, 16, dict(mode='whole'), fixed, what)  # bounded by the crop
    with pytest.raises(FixedTokenCountError) as e:
        check_inference_size(grid, 16, dict(mode='whole'), pipeline, what)
    assert 'model.test_cfg.mode=slide "model.test_cfg.crop_size=(256,256)"' in str(e.value)
    assert isinstance(e.value, ValueError)  # code that catches ValueError keeps working
