"""More bad input across the tools: one ``error: ...`` line, exit code 2, nothing half-written.

Wrong checkpoints (another architecture, truncated), unusable datasets (no images, annotations
with labels above 150, of the wrong size, colour-coded), and a compressed model asked to run on
inputs above its crop. Images whose size is not a multiple of the patch size are not an error
(they are padded): those run.
"""
import glob
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
from mmengine.config import Config, ConfigDict
from PIL import Image

from conftest import run_tool
from mmseg_pm.utils import UserError

DEMO = 'configs/demo/pm_segmenter_vit-t_ade20k-sample-256.py'


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith('error: '), line
    for needle in needles:
        assert needle in line, line
    return line


def assert_nothing_written(work_dir):
    """No checkpoint and no JSON record (MMEngine's log folder of the failed run may exist)."""
    found = [p for ext in ('pth', 'json') for p in
             glob.glob(osp.join(str(work_dir), '**', f'*.{ext}'), recursive=True)]
    found += glob.glob(osp.join(str(work_dir), '**', '.*.tmp*'), recursive=True)
    assert not found, found
    assert not osp.exists(osp.join(str(work_dir), 'last_checkpoint'))


def data_options(root):
    opts = []
    for split in ('train', 'val', 'test'):
        opts += [f'{split}_dataloader.dataset.data_root={root}',
                 f'{split}_dataloader.num_workers=0',
                 f'{split}_dataloader.persistent_workers=False']
    return opts


def build_model(config):
    from mmseg.registry import MODELS
    cfg = Config.fromfile(config)
    cfg.model.pretrained = None
    cfg.model.backbone.pop('init_cfg', None)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.eval()


def compress_randomly(model, seed=0):
    """Install a structure searched from random scores (no data needed)."""
    from mmseg_pm.compression.search import search_structures
    backbone = model.backbone
    g = torch.Generator().manual_seed(seed)
    n = int(np.prod(backbone.structure_grid))
    spans = [(u.start, u.end) for u in backbone.pm_units]
    scores = {i: torch.rand(n, generator=g, dtype=torch.float64) for i in range(len(spans))}
    structures, _ = search_structures(scores, spans, backbone.structure_grid, 0.6, 0.1)
    backbone.install_structures(structures)
    return model


@pytest.fixture(scope='module')
def compressed_tiny(tmp_path_factory):
    """(model, checkpoint path) of the tiny config, compressed from random scores."""
    model = compress_randomly(build_model(DEMO))
    path = tmp_path_factory.mktemp('ckpt') / 'tiny_compressed.pth'
    torch.save({'meta': {}, 'state_dict': model.state_dict()}, path)
    return model, str(path)


# --------------------------------------------------------------------------------------------
# checkpoints
# --------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_checkpoint_of_another_architecture(sample_root, tmp_path):
    """A ViT-S Segmenter given as load_from to the ViT-T config: one line naming the shapes."""
    ckpt = tmp_path / 'segmenter_vit-s.pth'
    torch.save({'meta': {}, 'state_dict': build_model('configs/segmenter_vit-s_ade20k.py')
                .state_dict()}, ckpt)
    work = tmp_path / 'work'
    proc = run_tool('tools/train.py', DEMO, '--work-dir', str(work), '--cfg-options',
                    f'load_from={ckpt}', *data_options(sample_root), check=False)
    line = assert_one_line_error(proc, 'the checkpoint does not match the config',
                                 'shape mismatches', 'checkpoint (1, 1, 384) vs model (1, 1, 192)')
    assert 'same architecture' in line
    assert_nothing_written(work)


def truncated_copy(src, dst):
    data = open(src, 'rb').read()
    with open(dst, 'wb') as f:
        f.write(data[:len(data) // 2])
    return str(dst)


def test_truncated_checkpoint_train_and_test(compressed_tiny, sample_root, tmp_path):
    bad = truncated_copy(compressed_tiny[1], tmp_path / 'truncated.pth')
    work = tmp_path / 'work'
    proc = run_tool('tools/train.py', DEMO, '--work-dir', str(work), '--cfg-options',
                    f'load_from={bad}', *data_options(sample_root), check=False)
    assert_one_line_error(proc, 'cannot read load_from checkpoint', bad, 'truncated')
    proc = run_tool('tools/test.py', DEMO, bad, '--work-dir', str(work), '--cfg-options',
                    *data_options(sample_root), check=False)
    assert_one_line_error(proc, 'cannot read checkpoint', bad, 'truncated')
    assert not work.exists()  # refused before MMEngine started


def test_unreadable_checkpoint_loader_error(compressed_tiny, tmp_path):
    """Past the pre-flight check (e.g. --resume), torch.load's failure is one UserError."""
    from mmengine.runner.checkpoint import CheckpointLoader

    from mmseg_pm.compat import CheckpointReadError
    bad = truncated_copy(compressed_tiny[1], tmp_path / 'iter_4.pth')
    with pytest.raises(CheckpointReadError, match='cannot read checkpoint .*iter_4.pth') as e:
        CheckpointLoader.load_checkpoint(bad, map_location='cpu')
    assert isinstance(e.value, UserError) and '\n' not in str(e.value)
    legacy = tmp_path / 'legacy.pth'
    torch.save({'w': torch.zeros(4096)}, legacy, _use_new_zipfile_serialization=False)
    bad = truncated_copy(legacy, tmp_path / 'legacy_truncated.pth')
    with pytest.raises(CheckpointReadError, match='truncated'):
        CheckpointLoader.load_checkpoint(bad, map_location='cpu')


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------
def test_data_root_without_images(tmp_path):
    root = tmp_path / 'root'
    os.makedirs(root / 'annotations' / 'training')
    proc = run_tool('tools/train.py', DEMO, '--work-dir', str(tmp_path / 'work'),
                    '--cfg-options', f'train_dataloader.dataset.data_root={root}', check=False)
    assert_one_line_error(proc, 'train image folder not found', 'images/training')
    assert not (tmp_path / 'work').exists()


def small_copy(sample_root, dst, num=4):
    """The first ``num`` training pairs of the sample (+ the validation folder), as files."""
    for kind in ('images', 'annotations'):
        os.makedirs(dst / kind / 'training')
        shutil.copytree(osp.join(sample_root, kind, 'validation'), dst / kind / 'validation')
    names = sorted(os.listdir(osp.join(sample_root, 'images', 'training')))[:num]
    for name in names:
        stem = osp.splitext(name)[0]
        shutil.copy(osp.join(sample_root, 'images', 'training', name),
                    dst / 'images' / 'training' / name)
        shutil.copy(osp.join(sample_root, 'annotations', 'training', stem + '.png'),
                    dst / 'annotations' / 'training' / (stem + '.png'))
    return [osp.splitext(n)[0] for n in names]


def dataset_cfg(root):
    cfg = Config.fromfile(DEMO)
    ds = cfg.train_dataloader.dataset
    ds.data_root = str(root)
    return ds


def edit_annotation(root, stem, fn):
    path = root / 'annotations' / 'training' / (stem + '.png')
    ann = np.array(Image.open(path))
    Image.fromarray(fn(ann)).save(path)
    return str(path)


@pytest.mark.parametrize('case', ['labels', 'size', 'rgb', 'missing', 'uint16'])
def test_check_annotations(sample_root, tmp_path, case):
    from mmseg_pm.utils.preflight import check_dataset
    root = tmp_path / 'data'
    stems = small_copy(sample_root, root)
    check_dataset(dataset_cfg(root), 'train')  # the real sample passes
    stem = stems[1]
    if case == 'labels':
        path = edit_annotation(root, stem, lambda a: np.where(a == a.max(), 200, a)
                               .astype(np.uint8))
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
    with pytest.raises(UserError) as e:
        check_dataset(dataset_cfg(root), 'train')
    for needle in needles:
        assert needle in str(e.value), str(e.value)
    # only the first 3 (sorted) are opened: a bad 4th annotation is left to the loader
    if case == 'labels':
        shutil.copy(osp.join(sample_root, 'annotations', 'training', stem + '.png'), path)
        edit_annotation(root, stems[3], lambda a: np.full_like(a, 200))
        check_dataset(dataset_cfg(root), 'train')


def test_annotation_labels_above_150_stop_train(sample_root, tmp_path):
    root = tmp_path / 'data'
    stems = small_copy(sample_root, root)
    path = edit_annotation(root, stems[0], lambda a: np.where(
        a > 0, np.minimum(a.astype(np.int32) + 150, 254), 0).astype(np.uint8))
    work = tmp_path / 'work'
    proc = run_tool('tools/train.py', DEMO, '--work-dir', str(work), '--cfg-options',
                    *data_options(root), check=False)
    assert_one_line_error(proc, 'train annotation', path, 'above 150')
    assert not work.exists()


# --------------------------------------------------------------------------------------------
# input sizes vs the compressed structure
# --------------------------------------------------------------------------------------------
def predict(model, h, w):
    from mmseg.structures import SegDataSample
    sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                         pad_shape=(h, w), padding_size=[0, 0, 0, 0]))
    with torch.no_grad():
        return model.predict(torch.randn(1, 3, h, w), [sample])[0]


def test_image_size_not_multiple_of_patch_is_padded(compressed_tiny):
    """250x253 (not multiples of 16) and 230x300 run: whole-image inference below the crop is
    padded to it; slide windows of a larger image are full crops or padded."""
    model = compressed_tiny[0]
    assert model.backbone.is_compressed
    test_cfg = model.test_cfg
    try:
        model.test_cfg = ConfigDict(mode='whole')
        out = predict(model, 250, 253)
        assert out.seg_logits.data.shape == (150, 250, 253)
        feats = model.backbone(torch.randn(1, 3, 250, 253))
        assert feats[-1].shape[-2:] == (16, 16)  # ceil(250 / 16), ceil(253 / 16)
        model.test_cfg = ConfigDict(mode='slide', crop_size=(256, 256), stride=(192, 192))
        out = predict(model, 230, 300)
        assert out.seg_logits.data.shape == (150, 230, 300)
        assert torch.isfinite(out.seg_logits.data).all()
    finally:
        model.test_cfg = test_cfg


def test_input_above_structure_crop(compressed_tiny):
    from mmseg_pm.utils.runtime import (check_inference_fits_structure,
                                        is_fixed_token_count_error)
    model = compressed_tiny[0]
    with pytest.raises(ValueError) as e:
        model.backbone(torch.randn(1, 3, 320, 256))
    assert is_fixed_token_count_error(e.value)
    assert not is_fixed_token_count_error(ValueError('something else'))
    pipeline = Config.fromfile(DEMO).test_dataloader.dataset.pipeline  # Resize (1024, 256)
    test_cfg = model.test_cfg
    try:
        model.test_cfg = dict(mode='slide', crop_size=(256, 256), stride=(192, 192))
        check_inference_fits_structure(model, pipeline)  # the shipped setting
        model.test_cfg = dict(mode='slide', crop_size=(320, 320), stride=(240, 240))
        with pytest.raises(UserError, match=r'crop_size=\(320, 320\) is larger than the 256x256'):
            check_inference_fits_structure(model, pipeline)
        model.test_cfg = dict(mode='whole')
        with pytest.raises(UserError, match='up to 1024x1024 after the test pipeline'):
            check_inference_fits_structure(model, pipeline)
        fixed = [dict(type='LoadImageFromFile'),
                 dict(type='Resize', scale=(256, 240), keep_ratio=False)]
        check_inference_fits_structure(model, fixed)  # whole images bounded by the crop: fine
    finally:
        model.test_cfg = test_cfg


@pytest.mark.e2e
def test_test_tool_whole_inference_on_compressed_model(compressed_tiny, sample_root, tmp_path):
    """A 256-crop structure tested without slide inference (as 512 at 640): one line, no
    output, before any image runs."""
    work = tmp_path / 'work'
    proc = run_tool('tools/test.py', DEMO, compressed_tiny[1], '--work-dir', str(work),
                    '--cfg-options', 'model.test_cfg.mode=whole', *data_options(sample_root),
                    check=False)
    assert_one_line_error(proc, "test_cfg.mode='whole'", 'fixed token count', '256x256',
                          'model.test_cfg.mode=slide')
    assert_nothing_written(work)


def test_train_refuses_val_crop_above_structure(sample_root, tmp_path):
    proc = run_tool('tools/train.py', DEMO, '--work-dir', str(tmp_path / 'work'),
                    '--cfg-options', 'model.test_cfg.crop_size=(320,320)',
                    *data_options(sample_root), check=False)
    assert_one_line_error(proc, 'crop_size=(320, 320) is larger than the 256x256 crop',
                          'backbone img_size')
    assert not (tmp_path / 'work').exists()
