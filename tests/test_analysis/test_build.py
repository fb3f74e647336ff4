"""Building the analysed models (mmseg_pm.analysis.build / suite): configs, strict checkpoints,
the three rows of a comparison, real images."""
import pytest
import torch

from mmseg_pm.analysis import load_segmentor
from mmseg_pm.analysis.benchmark import BenchmarkSpec
from mmseg_pm.analysis.build import check_shape_fits, default_input_shape, load_images
from mmseg_pm.analysis.suite import build_entries, compare, comparison_entries
from mmseg_pm.errors import CheckpointMismatchError, DataError, FixedTokenCountError, UserError
from tests.utils import (BASELINE, DEMO, REPO, build_model, compress_randomly, quiet,
                         save_checkpoint, tiny_cfg)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    quiet()
    out = tmp_path_factory.mktemp('analysis')
    cfg, base = tiny_cfg(), tiny_cfg(plain=True)
    cfg.dump(str(out / 'tiny.py'))
    base.dump(str(out / 'base.py'))
    model = build_model(cfg)
    return dict(config=str(out / 'tiny.py'), base_config=str(out / 'base.py'),
                plain=save_checkpoint(model, out / 'plain.pth'),
                pm=save_checkpoint(compress_randomly(model, 0.5, 0.25), out / 'pm.pth'),
                base=save_checkpoint(build_model(base), out / 'base.pth'))


def test_load_segmentor_installs_the_structure_strictly(files):
    model = load_segmentor(files['config'], files['pm'])
    assert model.backbone.is_compressed and not model.training
    assert default_input_shape(model) == (64, 64) and model.cfg.filename == files['config']
    assert model.dataset_meta['classes'][0] == 'wall'  # from the checkpoint's meta
    check_shape_fits(model, (64, 64))
    with pytest.raises(FixedTokenCountError, match='--shape 32 32 does not apply'):
        check_shape_fits(model, (32, 32))
    with pytest.raises(CheckpointMismatchError, match='backbone.pm.'):
        load_segmentor(files['base_config'], files['pm'])
    with pytest.raises(UserError, match='config file not found'):
        load_segmentor(f'{REPO}/configs/nope.py')


def test_comparison_rows(files):
    entries = comparison_entries(files['base_config'], [files['config']])
    assert [(e.role, e.model_cfg['backbone']['type']) for e in entries] == [
        ('stock', 'VisionTransformer'), ('uncompressed', 'TokenReductionViT'),
        ('compressed', 'PruneMergeViT')]
    entries[2].checkpoint = files['pm']
    models = build_entries(entries, files['base'])
    assert models[entries[2].name].backbone.is_compressed
    # the stock and our uncompressed model hold the same weights
    a, b = (models[e.name].state_dict() for e in entries[:2])
    assert all(torch.equal(a[k], b[k]) for k in a)
    # a Prune-and-Merge model without structure needs --keep-rate
    entries = comparison_entries(files['base_config'], [files['config']])
    entries[2].checkpoint = files['plain']
    with pytest.raises(UserError, match='holds no Prune-and-Merge structure'):
        build_entries(entries, files['base'])
    models = build_entries(entries, files['base'], keep_rate=0.5)
    assert entries[2].structure.startswith('random uniform (keep_rate=0.5')


def test_compare_needs_real_images(files, tmp_path, sample_root):
    entries = comparison_entries(files['base_config'], [files['config']])
    entries[2].checkpoint = files['pm']
    models = build_entries(entries, files['base'])
    spec = BenchmarkSpec(batch_sizes=(1, ), warmup=0, iters=1, repeat=1, reduction_iters=0,
                         progress=False)
    cfg = tiny_cfg()
    with pytest.raises(DataError, match='test data root not found: .*nowhere'):
        compare(entries, models, cfg, spec, data_root=str(tmp_path / 'nowhere'))
    result = compare(entries, models, cfg, spec, data_root=sample_root, num_flops_images=1)
    assert [r['role'] for r in result['rows']] == ['stock', 'uncompressed', 'compressed']
    assert result['protocol']['data_root'] == sample_root


def test_load_images(sample_root):
    cfg = tiny_cfg(sample_root)
    samples = load_images(cfg, 10, (48, 80))  # 8 test images, repeated
    assert len(samples) == 10 and samples[0]['inputs'].shape == (3, 48, 80)
    assert torch.equal(samples[8]['inputs'], samples[0]['inputs'])
    cfg.test_dataloader = None
    with pytest.raises(UserError, match='no test_dataloader.dataset'):
        load_images(cfg, 1, (48, 80))


def test_configs_of_the_repository_build(demo_checkpoints):
    model = load_segmentor(f'{REPO}/{BASELINE}', demo_checkpoints['baseline'])
    assert not model.backbone.is_reducing
    model = load_segmentor(f'{REPO}/{DEMO}', demo_checkpoints['compressed'])
    assert model.backbone.fixed_input_size == (256, 256)
